"""torchbp.audit: the checker against planted bugs, stateful layers, odd outputs; the report's forms."""
import dataclasses
import json

import pytest
import torch

import torchbp
from torchbp.checker import AuditReport, compare_reports

from planted import PlantedTanh, tanh_function, tanh_twin


class Unswappable(torch.nn.Module):
    """Owns a parameter, has no twin and calls no routed op (an aten op called directly): its
    gradient stays native."""

    def __init__(self, n):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return torch.ops.aten.mul.Tensor(x, self.scale)


def deep(n=6, width=16, bug_at=None, dtype=torch.float64):
    layers = []
    for i in range(n):
        layers += [torch.nn.Linear(width, width), PlantedTanh() if i == bug_at else torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 3)).to(dtype)


def state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
            [m.training for m in model.modules()], [type(m) for m in model.modules()],
            torch.get_rng_state())


def assert_same_state(a, b):
    sa, ga, ta, ca, ra = a
    sb, gb, tb, cb, rb = b
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert (ga[k] is None) == (gb[k] is None) and (ga[k] is None or torch.equal(ga[k], gb[k])), k
    assert ta == tb and ca == cb and torch.equal(ra, rb)


# --- verdicts -------------------------------------------------------------------------------------------

def test_mlp_ok_float64_full_coverage():
    torch.manual_seed(0)
    model = deep(3)
    r = torchbp.audit(model, torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    assert r.ok and r.first_divergence is None and r.coverage == 1.0
    assert {row.status for row in r.rows} == {"ok"}
    assert max(row.rel_err for row in r.rows) <= 1e-10
    names = {(row.layer, row.quantity) for row in r.rows}
    assert ("0", "weight") in names and ("1", "grad_input") in names and ("", "grad_output") in names


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bug_at", [1, 4])
def test_planted_bug_is_first_divergence(dtype, bug_at):
    torch.manual_seed(0)
    model = deep(6, bug_at=bug_at, dtype=dtype)
    r = torchbp.audit(model, torch.randn(8, 16, dtype=dtype), dtype=dtype)
    assert not r.ok
    assert r.first_divergence == str(2 * bug_at + 1)  # the PlantedTanh, not its downstream echo
    bad = [row for row in r.rows if row.status == "fail"]
    assert bad and all(int(row.layer or 999) <= 2 * bug_at + 1 for row in bad if row.layer)
    with pytest.raises(AssertionError, match="first divergence: '%d'" % (2 * bug_at + 1)):
        torchbp.assert_gradients_match(model, torch.randn(8, 16, dtype=dtype), dtype=dtype)


def test_planted_bug_in_nested_block_names_innermost():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), PlantedTanh())
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(block, torch.nn.Linear(8, 8)),
                                torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    r = torchbp.audit(model, torch.randn(4, 8, dtype=torch.float64))
    assert r.first_divergence == "1.0.1"


def test_float32_oracle_rule_reports_both_errors():
    torch.manual_seed(0)
    r = torchbp.audit(deep(3, dtype=torch.float32), torch.randn(8, 16), dtype=torch.float32)
    assert r.ok and r.environment["dtype"] == "float32"
    for row in r.rows:
        assert row.native_rel_err is not None
        assert row.tolerance >= 2 * row.native_rel_err + 1e-5 * (1 - 1e-9)
        assert row.rel_err <= row.tolerance


def test_dtype_argument_audits_a_copy():
    torch.manual_seed(0)
    model, x = deep(2, dtype=torch.float32), torch.randn(4, 16)
    before = state(model)
    r = torchbp.audit(model, x, dtype=torch.float64)
    assert r.ok and r.environment["dtype"] == "float64"
    assert_same_state(before, state(model))
    assert next(model.parameters()).dtype == torch.float32


# --- the audit leaves the model as it found it ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dropout_batchnorm_train_mode_pass_and_state_untouched(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(32, 32), torch.nn.Dropout(0.5),
                                torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(dtype).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # a .grad that must survive; others None
    x, y = torch.randn(16, 10, dtype=dtype), torch.randn(16, 4, dtype=dtype)
    before = state(model)
    r1 = torchbp.audit(model, x, y, dtype=dtype)
    assert r1.ok, str(r1)
    assert_same_state(before, state(model))
    r2 = torchbp.audit(model, x, y, dtype=dtype)  # auditing twice: identical rows
    assert json.loads(r1.to_json())["rows"] == json.loads(r2.to_json())["rows"]


def test_eval_mode_and_no_grad_context():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh()).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    before = state(model)
    with torch.no_grad():
        r = torchbp.audit(model, x)
    assert r.ok
    assert_same_state(before, state(model))


# --- robustness -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_give_nonfinite_rows(bad):
    model = deep(2)
    x = torch.randn(4, 16, dtype=torch.float64)
    x[0, 0] = bad
    r = torchbp.audit(model, x)
    assert not r.ok
    assert any(row.status == "nonfinite" for row in r.rows)
    assert "FAIL" in str(r)
    json.loads(r.to_json())  # valid JSON (no NaN literals)


def test_module_called_twice_gets_row_sets():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = torch.nn.Linear(5, 5), torch.nn.Tanh()

        def forward(self, x):
            return self.lin(self.act(self.lin(x)))

    r = torchbp.audit(Twice().double(), torch.randn(3, 5, dtype=torch.float64))
    assert r.ok
    layers = {row.layer for row in r.rows}
    assert {"lin", "lin#2", "act"} <= layers
    assert {row.quantity for row in r.rows if row.layer == "lin#2"} == {"grad_output", "grad_input"}


def test_tied_weights():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 6, bias=False)
            self.dec.weight = torch.nn.Parameter(self.enc.weight.t().contiguous())
            self.enc.weight = torch.nn.Parameter(self.dec.weight.t())  # view: truly shared storage below

        def forward(self, x):
            return torch.nn.functional.linear(torch.tanh(self.enc(x)), self.enc.weight.t())

    model = Tied().double()
    r = torchbp.audit(model, torch.randn(3, 6, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0
    assert [row.quantity for row in r.rows if row.layer == "enc"].count("weight") == 1


def test_inplace_activation_rows():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(inplace=True), torch.nn.Linear(7, 7),
                                torch.nn.ReLU(inplace=True), torch.nn.Linear(7, 2)).double()
    r = torchbp.audit(model, torch.randn(4, 5, dtype=torch.float64))
    assert r.ok, str(r)
    rows = {(row.layer, row.quantity): row for row in r.rows}
    for q in [("0", "grad_output"), ("1", "grad_output"), ("1", "grad_input"), ("3", "grad_input")]:
        assert q in rows
    # the δ leaving ReLU 1 is the δ arriving at Linear 0
    assert rows[("1", "grad_input")].sha256 == rows[("0", "grad_output")].sha256


def test_tuple_dict_dataclass_outputs_and_inputs_without_grad():
    @dataclasses.dataclass
    class Out:
        a: torch.Tensor
        b: torch.Tensor

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

        def forward(self, x, mask=None):
            return Out(self.l1(x), self.l2(x) * mask)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = Heads()

        def forward(self, x, mask):
            o = self.heads(x, mask=mask)
            return {"a": o.a, "pair": (o.b, torch.tanh(o.a))}

    x = torch.randn(5, 4, dtype=torch.float64)
    mask = torch.ones(5, 2, dtype=torch.float64)
    r = torchbp.audit(Wrap().double(), {"x": x, "mask": mask})
    assert r.ok
    qs = {row.quantity for row in r.rows if row.layer == "heads"}
    assert {"grad_output[a]", "grad_output[b]"} <= qs


def test_input_requiring_grad_gives_root_grad_input():
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    r = torchbp.audit(deep(2), x)
    assert r.ok and any(row.layer == "" and row.quantity == "grad_input" for row in r.rows)
    assert x.grad is None


def test_coverage_below_one_with_unswappable_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Unswappable(4), torch.nn.Linear(4, 2)).double()
    r = torchbp.audit(model, torch.randn(3, 4, dtype=torch.float64))
    assert r.ok and r.coverage == pytest.approx(4 / 5)
    assert [row.status for row in r.rows if row.layer == "1" and row.quantity == "scale"] == ["native"]


def test_functional_calls_are_routed():
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return torch.tanh(torch.nn.functional.linear(x, self.w))

    r = torchbp.audit(Functional().double(), torch.randn(2, 4, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0


def test_against_reference_model():
    torch.manual_seed(0)
    ref = deep(3)
    same = torchbp.swap(deep(3).load_state_dict(ref.state_dict()) and None or deep(3))
    same.load_state_dict(ref.state_dict())
    assert torchbp.audit(same, torch.randn(4, 16, dtype=torch.float64), against=ref).ok
    other = deep(3, bug_at=1)
    other.load_state_dict(ref.state_dict())
    torchbp.swap(other)
    r = torchbp.audit(other, torch.randn(4, 16, dtype=torch.float64), against=ref)
    assert not r.ok and r.first_divergence == "3"
    torchbp.unswap(other)


def test_repeat_marks_reproducibility():
    r = torchbp.audit(deep(2), torch.randn(4, 16, dtype=torch.float64), repeat=2)
    assert r.ok and all(row.reproducible is True for row in r.rows) and r.not_reproducible == []
    assert all(row.reproducible is None for row in torchbp.audit(deep(2), torch.randn(4, 16, dtype=torch.float64)).rows)


# --- report forms ---------------------------------------------------------------------------------------

def test_str_json_markdown_and_compare():
    torch.manual_seed(0)
    model = deep(2)
    x = torch.randn(4, 16, dtype=torch.float64)
    r = torchbp.audit(model, x)
    text = str(r)
    assert text.splitlines()[0].startswith("torchbp.audit: OK") and "coverage 100%" in text
    assert "rel err" in text.splitlines()[1]
    d = json.loads(r.to_json())
    assert list(d) == ["schema", "ok", "first_divergence", "coverage", "environment", "rows"]
    back = AuditReport.from_json(r.to_json())
    assert back.rows == r.rows and back.ok == r.ok and back.coverage == r.coverage
    assert compare_reports(r, back, bitwise=True) == []
    md = r.to_markdown()
    assert md.startswith("### ") and "| layer" in md
    r2 = torchbp.audit(model, 2 * x)
    diffs = compare_reports(r, r2, bitwise=True)
    assert diffs and compare_reports(r, r2, rtol=1e-3)


def test_big_model_folds_passing_rows():
    r = torchbp.audit(deep(12), torch.randn(4, 16, dtype=torch.float64))
    assert len(r.rows) > 40 and "passing rows folded" in str(r)
    assert "folded" not in r.table(full=True)
    bad = torchbp.audit(deep(12, bug_at=10), torch.randn(4, 16, dtype=torch.float64))
    assert "21" in str(bad).splitlines()[0] and "fail" in str(bad)


def test_environment_block():
    env = torchbp.audit(deep(1), torch.randn(2, 16, dtype=torch.float64), seed=3).environment
    for k in ("torch", "cuda", "cudnn", "device", "device_name", "dtype", "deterministic_algorithms",
              "CUBLAS_WORKSPACE_CONFIG", "seed", "tf32"):
        assert k in env
    assert env["seed"] == 3 and env["tf32"] is False


def test_plot_needs_matplotlib_or_writes(tmp_path):
    r = torchbp.audit(deep(1), torch.randn(2, 16, dtype=torch.float64))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"torchbp\[plot\]"):
            r.plot(tmp_path / "p.png")
    else:
        assert (tmp_path / "p.png").exists() or r.plot(tmp_path / "p.png")


def test_floor_table_lives_in_compare():
    import util
    from torchbp.checker.compare import FLOOR
    assert util.FLOOR is FLOOR


def test_numpy_reference_rows():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Sigmoid(), torch.nn.Linear(6, 3), torch.nn.Tanh())
    r = torchbp.audit(model, torch.randn(4, 5), torch.randn(4, 3), reference="numpy")
    numpy_rows = [row for row in r.rows if row.quantity.endswith("(numpy)")]
    assert r.ok and len(numpy_rows) == 6 and all(row.rel_err <= 1e-10 for row in numpy_rows)
    with pytest.raises(ValueError, match="target"):
        torchbp.audit(model, torch.randn(4, 5), reference="numpy")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_cnn_inplace_after_custom_function_outputs(dtype):
    """In-place ReLU on the output of δ Functions (conv, batch norm), then pooling and flatten: every
    δ is captured in both passes (no row is lost to the in-place op), and the zero-by-cancellation
    gradient of a bias before BatchNorm is judged against the δ it came from."""
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(inplace=True),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 2 * 2, 10)).to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    before = state(cnn)
    r = torchbp.audit(cnn, x, dtype=dtype)
    assert r.ok, str(r)
    assert_same_state(before, state(cnn))
    qs = {(row.layer, row.quantity) for row in r.rows}
    assert {("2", "grad_input"), ("2", "grad_output"), ("5", "grad_input"), ("1", "grad_output")} <= qs


@tanh_twin(tanh_function(noise=1e-15))
class NoisyTanh(torch.nn.Tanh):
    """A δ whose last bits change from one backward to the next (like atomics on a GPU)."""


def test_repeat_names_layers_not_bitwise_reproducible():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), NoisyTanh(), torch.nn.Linear(6, 2)).double()
    r = torchbp.audit(model, torch.randn(3, 6, dtype=torch.float64), repeat=3)
    assert r.ok  # within tolerance, only not bitwise stable
    assert "1" in r.not_reproducible and "not bitwise reproducible" in r.verdict()
    assert [row.reproducible for row in r.rows if row.layer == "2"] == [True] * 4


def test_progress_goes_to_stderr(capsys):
    torchbp.audit(deep(1), torch.randn(2, 16, dtype=torch.float64), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "subject pass" in err
    torchbp.audit(deep(1), torch.randn(2, 16, dtype=torch.float64))
    assert capsys.readouterr().err == ""


def test_oracle_auto_skips_oracle_when_close_and_runs_it_on_failure():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    r = torchbp.audit(deep(3, dtype=torch.float32), x, oracle="auto", dtype=torch.float32)
    assert r.ok and r.environment["oracle"].startswith("skipped")
    assert all(row.native_rel_err is None and row.tolerance >= 1e-5 for row in r.rows)
    bad = torchbp.audit(deep(3, bug_at=1, dtype=torch.float32), x, oracle="auto", dtype=torch.float32)
    assert not bad.ok and bad.first_divergence == "3" and bad.environment["oracle"] == "float64"
    assert all(row.native_rel_err is not None for row in bad.rows)
    assert torchbp.audit(deep(2), torch.randn(2, 16, dtype=torch.float64), oracle="auto").environment["oracle"] is None


def test_audit_is_a_function_and_the_checker_modules_import():
    """torchbp.audit is a plain function; the checker's modules import under torchbp.checker."""
    import inspect
    import subprocess
    import sys
    code = ("import torchbp.checker.compare as c, torchbp.checker.report as r, torch, torchbp\n"
            "from torchbp.checker import audit, AuditReport\n"
            "m = torch.nn.Linear(3, 2).double()\n"
            "rep = torchbp.audit(m, torch.randn(2, 3, dtype=torch.float64))\n"
            "assert rep.ok and isinstance(rep, r.AuditReport) and c.FLOOR and audit is torchbp.audit\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert inspect.isfunction(torchbp.audit) and torchbp.AuditReport is AuditReport
