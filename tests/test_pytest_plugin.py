"""The pytest plugin, run the way a project would run it: pytester builds a small test suite in a temporary
directory and runs pytest on it (in-process where possible; in a subprocess for xdist and start-up)."""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401  before the in-process runs: pytester drops the modules first imported
#                       inside one, and torch's operator libraries cannot be imported (registered) twice

import torchbp
from torchbp import AuditReport

from planted import BadTanh, source, tanh_function

pytest_plugins = ["pytester"]

ROOT = Path(torchbp.__file__).resolve().parent.parent
ENTRY_POINT = any(ep.name == "torchbp" and ep.value == "torchbp.pytest_plugin"
                  for ep in importlib.metadata.entry_points(group="pytest11"))
AUTOLOAD = ENTRY_POINT and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
# load the plugin by hand only when the entry point will not (pluggy refuses one module registered twice)
PLUGIN = [] if AUTOLOAD else ["-p", "torchbp.pytest_plugin"]

# what the projects' tests import: a small MLP, and a tanh whose hand-written backward has a planted bug
# (tests/planted.py's BadTanh, its source written into the project)
MODELS = """
import torch
from torchbp.functional import DeltaFunction


""" + source(tanh_function, BadTanh) + '''


def mlp(act=torch.nn.Tanh):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), act(), torch.nn.Linear(8, 3))


def bad_pair():
    """(subject with the buggy tanh, native reference with the same weights)."""
    bad, ref = mlp(BadTanh), mlp()
    return bad, ref


def x():
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
'''

GOOD = '''
from tbp_models import mlp, x

def test_good(torchbp_audit):
    report = torchbp_audit(mlp(), x())
    assert report.ok
'''

BAD = '''
from tbp_models import bad_pair, x

def test_bad(torchbp_audit):
    bad, ref = bad_pair()
    torchbp_audit(bad, x(), against=ref)
'''

# the inner tests print the settings their audit ran with; the outer tests read them back
SHOW = '''
import pytest, torch
from tbp_models import mlp, x

def show(report):
    env = report.environment
    print(f"AUDIT dtype={env['dtype']} device={env['device']} seed={env['seed']}")
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(tbp_models=MODELS)
    return pytester


def run(pytester, *args):
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", "-s", *args)


def audits_printed(result):
    return sorted(line.split("AUDIT ", 1)[1] for line in result.outlines if "AUDIT " in line)


def test_registered_entry_point_options_and_marker(suite):
    if not ENTRY_POINT:
        pytest.skip("torchbp is not installed (pip install -e .): the pytest11 entry point is not active")
    help = suite.runpytest("--help").stdout.str()
    for opt in ("--torchbp-device", "--torchbp-dtype", "--torchbp-report", "torchbp_device", "torchbp_dtype",
                "torchbp_report"):
        assert opt in help
    suite.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.torchbp(device=None, dtype=None, **audit_kwargs)*"])


def test_passing_audit_and_summary(suite):
    suite.makepyfile(test_good=GOOD)
    result = run(suite)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*torchbp gradient audits*", "audits run: 1, failed: 0",
                                 "worst layer: * rel err *e-* [[]ok[]] in test_good.py::test_good"])


def test_no_audit_no_summary(suite):
    suite.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(suite)
    result.assert_outcomes(passed=1)
    assert "torchbp gradient audits" not in result.stdout.str()


def test_failing_audit_shows_verdict_and_failing_rows(suite):
    suite.makepyfile(test_bad=BAD)
    result = run(suite)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    failure = out[out.index("___ test_bad ___"):out.index("torchbp gradient audits")]
    lines = [line for line in failure.splitlines()[1:] if line.strip()]
    assert lines[0].startswith("torchbp.audit: FAIL | first divergence: '1'")  # the verdict line first
    assert "BadTanh" in failure and "fail" in failure  # then the failing rows: where, what, by how much
    assert not any(line.rstrip().endswith(" ok") for line in lines[1:])  # and only those
    assert "def test_bad" not in failure  # no traceback: the table is the message
    # worst = largest rel err (the downstream echo); the origin is named on the FAIL line
    result.stdout.fnmatch_lines(["audits run: 1, failed: 1",
                                 "worst layer: 0 (Linear) weight, rel err *e-01 [[]fail[]] in test_bad.py::test_bad",
                                 "FAIL test_bad.py::test_bad: first divergence '1'"])


def test_dtype_option_and_bad_value(suite):
    suite.makepyfile(test_show=SHOW + '''
def test_it(torchbp_audit):
    show(torchbp_audit(mlp(), x()))
''')
    assert audits_printed(run(suite)) == ["dtype=float64 device=cpu seed=0"]
    assert audits_printed(run(suite, "--torchbp-dtype=float32")) == ["dtype=float32 device=cpu seed=0"]
    result = run(suite, "--torchbp-dtype=float8")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--torchbp-dtype: invalid choice: 'float8'*"])
    # --torchbp-seed is the audit's seed (from the option table shared with the CLI)
    assert audits_printed(run(suite, "--torchbp-seed=5")) == ["dtype=float64 device=cpu seed=5"]


def test_ini_options(suite):
    suite.makeini("[pytest]\ntorchbp_dtype = bfloat16\ntorchbp_device = cpu\ntorchbp_report = out/audits.json\n")
    suite.makepyfile(test_show=SHOW + '''
def test_it(torchbp_audit):
    show(torchbp_audit(mlp(), x()))
''')
    result = run(suite)
    result.assert_outcomes(passed=1)
    assert audits_printed(result) == ["dtype=bfloat16 device=cpu seed=0"]
    doc = json.loads((suite.path / "out" / "audits.json").read_text())
    assert [a["dtype"] for a in doc["audits"]] == ["bfloat16"]
    # the command line beats the ini
    assert audits_printed(run(suite, "--torchbp-dtype=float64")) == ["dtype=float64 device=cpu seed=0"]
    suite.makeini("[pytest]\ntorchbp_dtype = float8\n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*torchbp: ini torchbp_dtype = 'float8'; choose one of float64, float32*"])


def test_marker_overrides_options_and_call_overrides_marker(suite):
    suite.makepyfile(test_show=SHOW + '''
pytestmark = pytest.mark.torchbp(dtype="float32")

def test_module_marker(torchbp_audit):
    show(torchbp_audit(mlp(), x()))

@pytest.mark.torchbp(dtype="float64", seed=7)
def test_own_marker(torchbp_audit):
    show(torchbp_audit(mlp(), x()))

@pytest.mark.torchbp(seed=7)
def test_call_kwargs(torchbp_audit):
    show(torchbp_audit(mlp(), x(), dtype=torch.float64, seed=3))
''')
    result = run(suite, "--torchbp-dtype=bfloat16")
    result.assert_outcomes(passed=3)
    assert audits_printed(result) == ["dtype=float32 device=cpu seed=0", "dtype=float64 device=cpu seed=3",
                                      "dtype=float64 device=cpu seed=7"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda audits run")
def test_cuda_request_skips_cleanly_without_gpu(suite):
    suite.makepyfile(test_dev=SHOW + '''
def test_audit(torchbp_audit):
    show(torchbp_audit(mlp(), x()))

@pytest.mark.torchbp(device="cpu")
def test_pinned_to_cpu(torchbp_audit):
    show(torchbp_audit(mlp(), x()))

def test_no_audit():
    pass
''')
    result = run(suite, "--torchbp-device=cuda", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: torchbp: no CUDA device available"])
    assert audits_printed(result) == ["dtype=float64 device=cpu seed=0"]


def test_device_all_runs_each_available_device(suite):
    suite.makepyfile(test_dev=SHOW + '''
def test_audit(torchbp_audit, torchbp_device):
    report = torchbp_audit(mlp(), x())
    assert report.environment["device"].startswith(torchbp_device)
    show(report)
''')
    result = run(suite, "--torchbp-device=all", "-v")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result.assert_outcomes(passed=len(devices))
    result.stdout.fnmatch_lines([f"test_dev.py::test_audit[[]{d}[]]*" for d in devices])


def test_report_file(suite):
    suite.makepyfile(test_good=GOOD, test_bad=BAD, test_twice='''
from tbp_models import mlp, x

def test_twice(torchbp_audit):
    torchbp_audit(mlp(), x())
    torchbp_audit(mlp(), x(), dtype="float32")
''')
    result = run(suite, "--torchbp-report=reports/all.json")
    result.assert_outcomes(passed=2, failed=1)
    path = suite.path / "reports" / "all.json"
    result.stdout.fnmatch_lines(["audits run: 4, failed: 1", f"report: {path}"])
    doc = json.loads(path.read_text())
    assert (doc["schema"], doc["audits_run"], doc["audits_failed"]) == ("torchbp-pytest/1", 4, 1)
    assert [(a["nodeid"], a["dtype"], a["ok"]) for a in doc["audits"]] == [
        ("test_bad.py::test_bad", "float64", False), ("test_good.py::test_good", "float64", True),
        ("test_twice.py::test_twice", "float64", True), ("test_twice.py::test_twice", "float32", True)]
    bad = doc["audits"][0]
    assert bad["first_divergence"] == "1" and bad["worst"]["status"] == "fail"
    for a in doc["audits"]:  # each entry carries the audit's own report, which loads back
        report = AuditReport.from_json(json.dumps(a["report"]))
        assert report.ok == a["ok"] and report.rows


def test_xdist_workers_merge_into_one_report(suite):
    pytest.importorskip("xdist")
    suite.makepyfile(**{f"test_m{i}": GOOD.replace("test_good", f"test_good{i}") for i in range(3)}, test_bad=BAD)
    result = suite.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-n", "2", "--torchbp-report=r.json")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["audits run: 4, failed: 1", "worst layer: 0 (Linear) weight, *test_bad.py::test_bad",
                                 "FAIL test_bad.py::test_bad: first divergence '1'"])
    doc = json.loads((suite.path / "r.json").read_text())
    assert [a["nodeid"] for a in doc["audits"]] == ["test_bad.py::test_bad"] + [
        f"test_m{i}.py::test_good{i}" for i in range(3)]


def _python(code, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def test_plugin_module_imports_no_torch(tmp_path):
    """The plugin and the option table it shares with the CLI defer torch (and the audit runner) to the
    first audit. The packages torchbp and torchbp.checker are stood in for by empty ones, so that only
    those two files run."""
    loaded = _python(f'''
import sys, types
for name, path in (("torchbp", {str(ROOT / "torchbp")!r}), ("torchbp.checker", {str(ROOT / "torchbp" / "checker")!r})):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [path]
import torchbp.pytest_plugin
print("torch" in sys.modules, "torchbp.checker.runner" in sys.modules)''', tmp_path)
    assert loaded == ["False", "False"]


def test_pytest_startup_imports_no_torch(tmp_path):
    """With the plugin loaded, a suite that never audits does not import torch."""
    loaded = _python(f'''
import sys, pytest
pytest.main(["--co", "-q", "-p", "no:cacheprovider", *{PLUGIN!r}])
print("torchbp" in sys.modules, "torch" in sys.modules)''', tmp_path)[-2:]
    assert loaded[0] == "True"  # the plugin was loaded
    assert loaded[1] == "False"  # torch is imported only when a test audits


@pytest.mark.parametrize("where, msg", [(".", "is a directory"), ("plain.txt/r.json", "cannot write there")])
def test_report_path_that_cannot_be_written_is_a_usage_error_at_start(suite, where, msg):
    suite.makefile(".txt", plain="not a directory")
    suite.makepyfile(test_good=GOOD)
    result = run(suite, f"--torchbp-report={where}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*torchbp: --torchbp-report *{where}: {msg}*"])
    assert "test_good" not in result.stdout.str()  # no test ran
    assert sorted(p.name for p in suite.path.iterdir()) == ["plain.txt", "tbp_models.py", "test_good.py"]


def test_finished_report_is_never_lost(suite, tmp_path_factory):
    # the report's directory turns into a file while the tests run: the report goes to a spare file
    suite.makepyfile(test_good=GOOD, test_zz_break='''
import shutil
def test_break_the_report_path():
    shutil.rmtree("reports", ignore_errors=True)
    open("reports", "w").close()
''')
    result = run(suite, "--torchbp-report=reports/all.json")
    assert result.ret == pytest.ExitCode.OK
    line = next(line for line in result.stdout.lines if "could not write" in line)
    spare = line.rsplit("the report is in ", 1)[1].strip()
    try:
        doc = json.loads(Path(spare).read_text())
        assert doc["audits_run"] == 1 and doc["audits"][0]["nodeid"] == "test_good.py::test_good"
    finally:
        os.unlink(spare)
    assert not [p for p in suite.path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("how", ["option", "ini"])
def test_bad_device_is_a_usage_error_at_start(suite, how):
    suite.makepyfile(test_good=GOOD)
    if how == "ini":
        suite.makeini("[pytest]\ntorchbp_device = bogus\n")
        result = run(suite)
    else:
        result = run(suite, "--torchbp-device=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*torchbp: --torchbp-device 'bogus' is not a device*"])
