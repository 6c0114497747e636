"""The ``torchbp`` command line: audit / compare / env / demo and their exit codes."""
import json
import subprocess
import sys
import textwrap

import pytest

from torchbp.cli import main

MODELS = textwrap.dedent('''
    import torch
    import torchbp
    from torchbp.functional._common import DeltaFunction

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def with_inputs():
        return mlp(), torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    class _Wrong(DeltaFunction):
        @staticmethod
        def forward(z):
            return torch.tanh(z)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, d):
            return 2 * d

    class CliTanh(torch.nn.Tanh):
        pass

    @torchbp.register(CliTanh)
    class _Twin(CliTanh):
        def forward(self, x):
            return _Wrong.apply(x)

    def buggy():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(10, 8), CliTanh(), torch.nn.Linear(8, 3)).double()

    def broken():
        raise ValueError("no model today")

    not_callable = 3
''')


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "cli_models.py").write_text(MODELS)
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
    (["audit", "cli_models:mlp", "--input-shape", "4,11"], "audit failed"),
    (["audit", "cli_models:broken", "--input-shape", "4,10"], "no model today"),
    (["audit", "cli_models:not_callable"], "not callable"),
    (["audit", "cli_models"], "MODULE:CALLABLE"),
    (["audit", "cli_models:mlp", "--dtype", "float8"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    (["compare", "missing.json", "missing.json"], "cannot read"),
])
def test_usage_errors_exit_2_one_line(models, capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


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
