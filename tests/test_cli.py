"""The ``torchbp`` command line: audit / compare / env / demo and their exit codes."""
import json
import subprocess
import sys
import textwrap

import pytest

from torchbp.cli import main

from planted import PlantedTanh, source, tanh_function, tanh_twin

# the models the command line loads; the buggy one with tests/planted.py's PlantedTanh, its source written in
MODELS = textwrap.dedent('''
    import torch
    import torchbp
    from torchbp.functional._common import DeltaFunction
''') + source(tanh_function, tanh_twin, PlantedTanh) + textwrap.dedent('''

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def with_inputs():
        return mlp(), torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def buggy():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(10, 8), PlantedTanh(), torch.nn.Linear(8, 3)).double()

    def broken():
        raise ValueError("no model today")

    not_callable = 3

    def unseeded():  # default initialisation: the weights come from torch's global generator
        return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def exits():
        import sys
        sys.exit("no GPU on this machine")

    def exits_zero():
        import sys
        sys.exit(0)
''')


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "cli_models.py").write_text(MODELS)
    (tmp_path / "exit_at_import.py").write_text('import sys\nsys.exit("cannot start: no data")\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_audit_ok_writes_json_and_markdown(models, capsys):
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", "--json", "a.json",
                 "--markdown", "a.md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torchbp.audit: OK")
    d = json.loads((models / "a.json").read_text())
    assert d["ok"] is True and d["schema"] == 1
    assert (models / "a.md").read_text().startswith("### ")


def test_audit_tuple_callable_float32_and_target(models, capsys):
    assert main(["audit", "cli_models:with_inputs", "--dtype", "float32", "--seed", "3"]) == 0
    assert "float32" in capsys.readouterr().out.splitlines()[0]


def test_audit_oracle_device_option(models):
    assert main(["audit", "cli_models:with_inputs", "--dtype", "float32", "--oracle-device", "cpu",
                 "--json", "o.json"]) == 0
    env = json.loads((models / "o.json").read_text())["environment"]
    assert env["oracle_device"] == "cpu" and env["oracle"] == "float64"


def test_audit_disagreement_exit_1(models, capsys):
    assert main(["audit", "cli_models:buggy", "--input-shape", "4,10", "--target-shape", "4,3"]) == 1
    assert "first divergence: '1'" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["audit", "no_such_module:f", "--input-shape", "2"], "cannot import"),
    (["audit", "cli_models:nope", "--input-shape", "2"], "no attribute"),
    (["audit", "cli_models:mlp"], "--input-shape"),
    (["audit", "cli_models:mlp", "--input-shape", "a,b"], "comma-separated"),
    (["audit", "cli_models:mlp", "--input-shape", "4,11"], "cannot run on these inputs"),
    (["audit", "cli_models:broken", "--input-shape", "4,10"], "no model today"),
    (["audit", "cli_models:not_callable"], "not callable"),
    (["audit", "cli_models"], "MODULE:CALLABLE"),
    (["compare", "missing.json", "missing.json"], "cannot read"),
])
def test_usage_errors_exit_2_one_line(models, capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, usage, msg", [
    (["audit", "cli_models:mlp", "--dtype", "float8"], "usage: torchbp audit MODULE:CALLABLE", "invalid choice"),
    (["frobnicate"], "usage: torchbp", "invalid choice"),
    ([], "usage: torchbp", "required: {demo,audit,compare,env}"),
    (["compare", "a.json"], "usage: torchbp compare A.json B.json", "required: B.json"),
    (["env", "--bogus"], "usage: torchbp env", "unrecognized arguments: --bogus"),
])
def test_bad_command_lines_give_one_usage_line_and_the_error(models, capsys, argv, usage, msg):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(usage) and msg in lines[1] and lines[1].startswith("torchbp")


def test_compare_equal_and_different(models, capsys):
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", "--json", "a.json"]) == 0
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", "--json", "b.json"]) == 0
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", "--seed", "1", "--json", "c.json"]) == 0
    capsys.readouterr()
    assert main(["compare", "a.json", "b.json", "--bitwise"]) == 0
    assert main(["compare", "a.json", "b.json"]) == 0
    assert "same" in capsys.readouterr().out
    assert main(["compare", "a.json", "c.json", "--bitwise"]) == 1
    out = capsys.readouterr().out
    assert "difference" in out and "sha256" in out and "weight" in out
    assert main(["compare", "a.json", "c.json", "--rtol", "1e-3"]) == 1


def test_env(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "deterministic_algorithms" in out
    assert main(["env", "--json"]) == 0
    assert "seed" in json.loads(capsys.readouterr().out)


def test_console_entry_via_subprocess(models):
    ok = subprocess.run([sys.executable, "-m", "torchbp", "audit", "cli_models:mlp", "--input-shape", "4,10"],
                        capture_output=True, text=True, cwd=models)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "torchbp", "audit", "cli_models:buggy", "--input-shape", "4,10"],
                         capture_output=True, text=True, cwd=models)
    assert bad.returncode == 1
    usage = subprocess.run([sys.executable, "-m", "torchbp", "audit", "nope:f"], capture_output=True, text=True,
                           cwd=models)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_options_defined_once():
    import argparse

    from torchbp.checker.options import OPTIONS, add_options
    p = argparse.ArgumentParser()
    add_options(p.add_argument, prefix="--torchbp-", names={"device", "dtype"})
    ns = p.parse_args(["--torchbp-dtype", "float32", "--torchbp-device", "cpu"])
    assert ns.torchbp_dtype == "float32" and ns.torchbp_device == "cpu"
    assert {o.name for o in OPTIONS} >= {"dtype", "device", "seed", "json", "markdown", "full", "repeat"}


def test_demo_delegates(monkeypatch):
    import types
    seen = {}
    fake = types.ModuleType("torchbp.demo")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "torchbp.demo", fake)
    import torchbp
    monkeypatch.setattr(torchbp, "demo", fake, raising=False)
    assert main(["demo", "--x"]) == 0 and seen["argv"] == ["--x"]


def _cli(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "torchbp", *argv], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("target, msg", [
    ("cli_models:exits", "cli_models:exits() called sys.exit('no GPU on this machine')"),
    ("cli_models:exits_zero", "cli_models:exits_zero() called sys.exit(0)"),
    ("exit_at_import:make", "importing 'exit_at_import' called sys.exit('cannot start: no data')"),
])
def test_sys_exit_in_the_users_code_is_not_agreement(models, target, msg):
    r = _cli("audit", target, "--input-shape", "4,10", cwd=models)
    assert r.returncode == 2 and msg in r.stderr and r.stdout == ""


def test_internal_error_exit_3_with_traceback(models, capsys, monkeypatch):
    import torchbp

    def broken_audit(*args, **kwargs):
        raise KeyError("a bug inside torchbp")
    monkeypatch.setattr(torchbp, "audit", broken_audit)
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug inside torchbp" in err and "internal error" in err


def test_torchbp_refusal_is_a_usage_error_not_an_internal_one(models, capsys, monkeypatch):
    import torchbp

    def refusing_audit(*args, **kwargs):
        raise RuntimeError("torchbp.functional.lstm: a PackedSequence input is refused")
    monkeypatch.setattr(torchbp, "audit", refusing_audit)
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "torchbp: error: torchbp.functional.lstm: a PackedSequence input is refused"


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--markdown-append"])
@pytest.mark.parametrize("where, msg", [("missing/r.out", "does not exist"), (".", "is a directory")])
def test_output_paths_checked_before_the_audit(models, capsys, flag, where, msg):
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", flag, where]) == 2
    out, err = capsys.readouterr()
    assert out == "" and msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, msg", [
    (["--input-shape=-1,4"], "sizes cannot be negative"),
    (["--input-shape", "4,10", "--target-shape=-3,2"], "sizes cannot be negative"),
    (["--input-shape", "100000000,100000000"], "more than this machine's memory"),
    (["--input-shape", "4,10", "--device", "bogus"], "is not a device"),
    (["--input-shape", "4,10", "--oracle-device", "cuda:x"], "is not a device"),
    (["--input-shape", "4,10", "--repeat", "-1"], "--repeat must be 0 or more"),
])
def test_bad_shapes_and_devices_exit_2(models, capsys, argv, msg):
    assert main(["audit", "cli_models:mlp", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("argv", [["env", "--device", "cuda"],
                                  ["audit", "cli_models:mlp", "--input-shape", "4,10", "--device", "cuda"]])
def test_cuda_without_a_gpu_is_a_usage_error(models, capsys, argv):
    assert main(argv) == 2
    assert "no CUDA device on this machine" in capsys.readouterr().err


def test_env_bad_device_subprocess(models):
    r = _cli("env", "--device", "bogus", cwd=models)
    assert r.returncode == 2 and "is not a device" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("content, msg", [
    ("[1, 2, 3]", "its top level is list"),
    ("null", "its top level is null"),
    ("{", "not JSON"),
    ('{"schema": 2, "rows": []}', "schema 2, expected 1"),
    ('{"schema": "torchbp-pytest/1", "audits": []}', "a pytest --torchbp-report file"),
    ('{"schema": 1, "ok": "yes", "rows": [], "environment": {}, "first_divergence": null, "coverage": 1}',
     "field 'ok'"),
    ('{"schema": 1, "ok": true, "rows": [1], "environment": {}, "first_divergence": null, "coverage": 1}',
     "row 0 is not an object"),
    ('{"schema": 1, "ok": true, "rows": [{"layer": "0", "kind": "Linear", "quantity": "weight", "status": "ok",'
     ' "shape": "3x4"}], "environment": {}, "first_divergence": null, "coverage": 1}', "row 0: field 'shape'"),
])
def test_compare_refuses_what_is_not_a_report(models, capsys, content, msg):
    assert main(["audit", "cli_models:mlp", "--input-shape", "4,10", "--json", "a.json"]) == 0
    (models / "bad.json").write_text(content)
    capsys.readouterr()
    assert main(["compare", "a.json", "bad.json"]) == 2
    err = capsys.readouterr().err
    assert "bad.json is not a torchbp audit report" in err or "cannot read report bad.json" in err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_compare_bad_rtol_and_help(models, capsys):
    assert main(["compare", "a.json", "b.json", "--rtol", "-1"]) == 2
    assert "--rtol must be" in capsys.readouterr().err
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "the first report" in out and "--bitwise" in out and "Exit codes" in out


def test_demo_bad_flag_usage_line_and_error(models):
    r = _cli("demo", "--bogus-flag", cwd=models)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2 and lines[0].startswith("usage: torchbp demo [--seed N]")
    assert "unrecognized arguments: --bogus-flag" in lines[1]


def test_seed_seeds_the_model_too_so_two_runs_compare_equal(models, capsys):
    for name in ("a.json", "b.json"):
        assert main(["audit", "cli_models:unseeded", "--input-shape", "4,10", "--json", name]) == 0
    rows = [json.loads((models / n).read_text())["rows"] for n in ("a.json", "b.json")]
    assert rows[0] == rows[1]
    capsys.readouterr()
    assert main(["compare", "a.json", "b.json", "--bitwise"]) == 0
    assert main(["audit", "cli_models:unseeded", "--input-shape", "4,10", "--seed", "1", "--json", "c.json"]) == 0
    assert main(["compare", "a.json", "c.json", "--bitwise"]) == 1  # another seed, other weights


def test_markdown_writes_and_markdown_append_appends(models):
    argv = ["audit", "cli_models:mlp", "--input-shape", "4,10"]
    (models / "w.md").write_text("old content\n")
    for _ in range(2):
        assert main([*argv, "--markdown", "w.md", "--markdown-append", "summary.md"]) == 0
    written, appended = (models / "w.md").read_text(), (models / "summary.md").read_text()
    assert "old content" not in written and written.count("### ") == 1
    assert appended.count("### ") == 2


def test_default_dtype_is_float64(models, capsys):
    assert main(["audit", "cli_models:unseeded", "--input-shape", "4,10", "--json", "d.json"]) == 0
    assert json.loads((models / "d.json").read_text())["environment"]["dtype"] == "float64"
    assert main(["audit", "--help"]) == 0
    assert "default float64" in " ".join(capsys.readouterr().out.split())
