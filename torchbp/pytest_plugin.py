"""pytest plugin: gradient audits in any project's test suite.

Loaded through the ``pytest11`` entry point ``torchbp``.  This module and the option table it shares
with the CLI (torchbp/checker/options.py) import no torch: torch and the audit runner are imported on the
first audit (or when ``--torchbp-device=all`` must ask which devices exist), so a suite that never
audits pays nothing for them -- provided the package ``__init__`` files are lazy too.

    def test_mlp_gradients(torchbp_audit):
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
        torchbp_audit(model, torch.randn(8, 10))   # fails the test when a layer's gradients disagree

Settings, lowest precedence first: defaults (cpu, float64) < ini (``torchbp_device``, ``torchbp_dtype``,
``torchbp_report``) < command line (``--torchbp-device``, ...) < ``@pytest.mark.torchbp(...)`` < the
keyword arguments of the call itself.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile

import pytest

from .checker.options import BY_NAME, DTYPES, add_options, audit_kwargs

# the audit options the plugin takes from the shared table (defined once for the CLI and the plugin),
# with the plugin's own defaults and help where they differ from the CLI's
NAMES = ("device", "dtype", "seed", "repeat")
DEFAULTS = {"device": "cpu", "dtype": "float64", "report": None}
HELP = {
    "device": "device of the gradient audits: cpu (default), cuda or cuda:N (skipped without a GPU), or "
              "all (each test once per available device)",
    "dtype": f"dtype of the gradient audits: {', '.join(DTYPES)} (default float64); below float64 each "
             "gradient is held against a float64 oracle",
    "report": "write every gradient audit of the session to one JSON file at PATH (merged across xdist workers)",
}
SCHEMA = "torchbp-pytest/1"

_KEY = pytest.StashKey["_Session"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchbp", "torchbp gradient audits")

    def add(flag, **kw):
        name = kw["dest"].removeprefix("torchbp_")
        kw["help"] = HELP.get(name, kw["help"])
        if "choices" not in kw:
            kw.setdefault("metavar", name.upper())
        group.addoption(flag, **dict(kw, default=None))  # unset: the ini, then DEFAULTS, decide
        parser.addini(kw["dest"], kw["help"], default=None)

    add_options(add, prefix="--torchbp-", names=NAMES)
    add("--torchbp-report", dest="torchbp_report", metavar="PATH", help=HELP["report"])


def _setting(config: pytest.Config, name: str):
    """Command line, then ini, then the plugin's default; ini strings converted and checked like the flag."""
    value = config.getoption(f"torchbp_{name}")
    if value is not None:
        return value
    value = config.getini(f"torchbp_{name}")
    if not value:
        return DEFAULTS.get(name)
    option = BY_NAME.get(name)
    if option is not None:
        if option.choices and value not in option.choices:
            raise pytest.UsageError(f"torchbp: ini torchbp_{name} = {value!r}; choose one of {', '.join(option.choices)}")
        try:
            value = option.type(value)
        except ValueError:
            raise pytest.UsageError(f"torchbp: ini torchbp_{name} = {value!r} is not a valid {option.type.__name__}") from None
    return value


def _check_dtype(dtype) -> None:
    if isinstance(dtype, str) and dtype.removeprefix("torch.") not in DTYPES:
        raise ValueError(f"torchbp_audit: unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


_PLAIN_DEVICE = re.compile(r"(cpu|all|cuda(:\d+)?)")


def _check_device(value: str) -> None:
    """A device torch knows, or "all": a usage error at start-up, not an error in every audit test.
    The common spellings are checked without importing torch; others are asked of torch.device."""
    if _PLAIN_DEVICE.fullmatch(value):
        return
    import torch
    try:
        torch.device(value)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise pytest.UsageError(f"torchbp: --torchbp-device {value!r} is not a device: cpu, cuda, cuda:N, "
                                f"all, or another device torch knows ({str(exc).splitlines()[0]})") from None


def _check_report_path(path: str) -> None:
    """The report's directory is created and a file written there now, so a path that cannot take the
    report is a usage error before any test runs, not a crash after all of them."""
    if os.path.isdir(path):
        raise pytest.UsageError(f"torchbp: --torchbp-report {path}: is a directory")
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".torchbp-report-check-"):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"torchbp: --torchbp-report {path}: cannot write there ({exc})") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torchbp(device=None, dtype=None, **audit_kwargs): settings of the torchbp_audit "
                   "fixture for this test (override --torchbp-device / --torchbp-dtype and the ini)")
    for name in NAMES:
        _setting(config, name)  # a bad ini value is a usage error now, not in every test
    _check_device(str(_setting(config, "device")))
    report = config.getoption("torchbp_report")
    if report is not None:
        report = os.path.join(config.invocation_params.dir, report)
    elif config.getini("torchbp_report"):
        base = config.inipath.parent if config.inipath else config.rootpath
        report = os.path.join(base, config.getini("torchbp_report"))
    if report is not None and not hasattr(config, "workerinput"):  # the controller writes it
        _check_report_path(report)
    config.stash[_KEY] = _Session(report)


def _marker_kwargs(node) -> dict:
    kwargs = {}
    for mark in reversed(list(node.iter_markers("torchbp"))):  # the closest marker wins
        if mark.args:
            raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.torchbp takes keyword arguments only")
        kwargs.update(mark.kwargs)
    return kwargs


def _available_devices() -> list[str]:
    import torch
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # device "all": one test per available device, so each shows (and fails, and skips) on its own
    if "torchbp_device" in metafunc.fixturenames:
        device = _marker_kwargs(metafunc.definition).get("device") or _setting(metafunc.config, "device")
        if device == "all":
            devices = _available_devices()
            metafunc.parametrize("torchbp_device", devices, indirect=True, ids=devices)


@pytest.fixture
def torchbp_device(request: pytest.FixtureRequest) -> str:
    """The device this test's audits run on (marker, then --torchbp-device, then ini, then cpu).
    Skips the test when that device is not available."""
    device = getattr(request, "param", None) or _marker_kwargs(request.node).get("device") \
        or _setting(request.config, "device")
    import torch
    kind = torch.device(device).type
    if kind != "cpu":
        mod = getattr(torch, kind, None)
        if mod is None or not hasattr(mod, "is_available") or not mod.is_available():
            pytest.skip(f"torchbp: no {kind.upper()} device available")
        index = torch.device(device).index
        if index is not None and hasattr(mod, "device_count") and index >= mod.device_count():
            pytest.skip(f"torchbp: no device {device} (only {mod.device_count()} {kind} devices)")
    return device


@pytest.fixture
def torchbp_audit(request: pytest.FixtureRequest, torchbp_device: str):
    """``torchbp_audit(model, inputs, target=None, **audit_kwargs) -> AuditReport``.

    Runs :func:`torchbp.audit` with this session's device and dtype (overridden by
    ``@pytest.mark.torchbp(...)`` and then by the call's own keyword arguments), records the report for
    ``--torchbp-report`` and the terminal summary, and fails the test when the gradients disagree: the
    message is the verdict line, then the failing rows — what differs, by how much, where."""
    session = request.config.stash[_KEY]
    marker = _marker_kwargs(request.node)

    def audit(model, inputs, target=None, **audit_kwargs):
        import torch
        from torchbp.checker import audit as run_audit
        kwargs = {**audit_kwargs_from(request.config), "progress": False, **marker, "device": torchbp_device,
                  **audit_kwargs}
        _check_dtype(kwargs["dtype"])
        if isinstance(kwargs["dtype"], str):
            kwargs["dtype"] = getattr(torch, kwargs["dtype"].removeprefix("torch."))
        report = run_audit(model, inputs, target, **kwargs)
        session.record(request.node.nodeid, str(kwargs["device"]), str(kwargs["dtype"]).removeprefix("torch."),
                       report)
        if not report.ok:
            pytest.fail(report.failure_message(), pytrace=False)
        return report

    return audit


def audit_kwargs_from(config: pytest.Config) -> dict:
    """The torchbp.audit keywords of this session's options (ini and command line)."""
    return audit_kwargs({name: _setting(config, name) for name in NAMES})


def _worst(rows):
    """The row with the largest relative error; non-finite rows count as the largest, rows of layers
    left to native autograd (status "native") do not count."""
    def key(row):
        err = row.rel_err
        return math.inf if row.status == "nonfinite" or err is None or math.isnan(err) else err
    return max((r for r in rows if r.status != "native"), key=key, default=None)


class _Session:
    """Every audit of this process; on an xdist worker it travels to the controller at the end."""

    def __init__(self, report_path):
        self.report_path = report_path
        self.write_error: str | None = None
        self.audits: list[dict] = []

    def record(self, nodeid, device, dtype, report):
        worst = _worst(report.rows)
        entry = {"nodeid": nodeid, "device": device, "dtype": dtype, "ok": bool(report.ok),
                 "first_divergence": report.first_divergence,
                 "worst": None if worst is None else {
                     "layer": worst.layer, "kind": worst.kind, "quantity": worst.quantity, "status": worst.status,
                     "rel_err": worst.rel_err if math.isfinite(worst.rel_err) else None}}
        if self.report_path:  # keep full reports only when they are to be written
            entry["report"] = json.loads(report.to_json())
        self.audits.append(entry)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config, state = session.config, session.config.stash[_KEY]
    if hasattr(config, "workeroutput"):  # an xdist worker: hand everything to the controller
        config.workeroutput["torchbp_audits"] = json.dumps(state.audits, default=str)
    elif state.report_path:
        audits = sorted(state.audits, key=lambda a: a["nodeid"])  # stable order whatever the scheduling
        failed = sum(not a["ok"] for a in audits)
        doc = {"schema": SCHEMA, "audits_run": len(audits), "audits_failed": failed, "audits": audits}
        text = json.dumps(doc, indent=1, default=str)
        try:
            _write_atomically(state.report_path, text)
        except OSError as exc:  # the path went bad during the session: keep the report elsewhere
            fd, spare = tempfile.mkstemp(prefix="torchbp-report-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            state.write_error = f"could not write {state.report_path} ({exc}); the report is in {spare}"


def _write_atomically(path: str, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it; no temporary file is left behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # xdist controller: merge the worker's audits
    audits = getattr(node, "workeroutput", {}).get("torchbp_audits")
    if audits:
        node.config.stash[_KEY].audits.extend(json.loads(audits))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    if state is not None and state.write_error:
        terminalreporter.write_sep("-", "torchbp gradient audits")
        terminalreporter.write_line(f"torchbp: {state.write_error}", red=True)
    if state is None or hasattr(config, "workeroutput") or not state.audits:
        return
    audits = state.audits
    failed = sum(not a["ok"] for a in audits)
    tr = terminalreporter
    tr.write_sep("-", "torchbp gradient audits")
    tr.write_line(f"audits run: {len(audits)}, failed: {failed}")
    worst = max((dict(a["worst"], nodeid=a["nodeid"]) for a in audits if a["worst"]), default=None,
                key=lambda w: math.inf if w["rel_err"] is None else w["rel_err"])
    if worst is not None:
        where = f"{worst['layer'] or '<root>'} ({worst['kind']}) {worst['quantity']}"
        err = "nan" if worst["rel_err"] is None else f"{worst['rel_err']:.2e}"
        tr.write_line(f"worst layer: {where}, rel err {err} [{worst['status']}] "
                      f"in {worst['nodeid']}")
    for a in [a for a in audits if not a["ok"]][:10]:  # where each failure starts
        where = "not located" if a["first_divergence"] is None else repr(a["first_divergence"])
        tr.write_line(f"FAIL {a['nodeid']}: first divergence {where}")
    if failed > 10:
        tr.write_line(f"... and {failed - 10} more failed audits")
    if state.report_path and not state.write_error:
        tr.write_line(f"report: {state.report_path}")
