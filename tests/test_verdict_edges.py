"""The verdict at the edge of each tolerance rule: an error planted just above the tolerance FAILs, just
below it passes, in float64 and in every lower precision; correct models sit far below it.

The planted error comes from a registered twin whose backward is the exact formula scaled by (1 + ε).
The tolerances are the documented contract (docs: "Comparison policy"), not read back from the checker:
float64 rel_err <= 1e-10; below float64, err(subject, oracle) <= 2·err(native, oracle) + floor(dtype),
with native's error as the audit measured it and floor(dtype) from tests/util.py.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
from torchbp import registry
from util import FLOOR, LOW

F64_RTOL = 1e-10  # the contract's float64 tolerance


class Affine(nn.Module):
    """A user's own layer (native: F.linear, which the subject pass routes to the δ linear)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.randn(n_out) / 4)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class PlantedAffine(torch.autograd.Function):
    """z = a Wᵀ + b with backward δ_a = (1 + ε_a)·δ W, ∂J/∂W = (1 + ε_W)·δᵀ a, ∂J/∂b = Σ δ: the exact
    formula, each scaled once in float64 and rounded once to the working dtype."""

    eps = {"input": 0.0, "weight": 0.0}

    @staticmethod
    def forward(a, W, b):
        return F.linear(a, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, W, _ = inputs
        ctx.save_for_backward(a, W)

    @staticmethod
    def backward(ctx, delta):
        a, W = ctx.saved_tensors
        eps = PlantedAffine.eps
        grad_a = _scaled(delta @ W, eps["input"])
        grad_W = _scaled(delta.t() @ a, eps["weight"])
        return grad_a, grad_W, delta.sum(0)


def _scaled(g, eps):
    return g if eps == 0 else (g.to(torch.float64) * (1 + eps)).to(g.dtype)


class AffineTwin(Affine):
    def forward(self, x):
        return PlantedAffine.apply(x, self.weight, self.bias)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.act, self.planted = nn.Linear(6, 8), nn.Tanh(), Affine(8, 8)
        self.act2, self.last = nn.Tanh(), nn.Linear(8, 4)

    def forward(self, x):
        return self.last(self.act2(self.planted(self.act(self.first(x)))))


@pytest.fixture
def planted():
    """The twin registered for Affine; ε back to 0 and the registration removed afterwards."""
    torchbp.register(Affine, AffineTwin)
    try:
        yield PlantedAffine.eps
    finally:
        registry.unregister(Affine)
        PlantedAffine.eps.update(input=0.0, weight=0.0)
    assert registry.twin_for(Affine) is None


def _net():
    torch.manual_seed(0)
    return Net()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g) * 2


def _audit(dtype):
    # below float64, oracle="always": every row holds native's own error against the float64 oracle
    return torchbp.audit(_net(), _inputs(), dtype=dtype, oracle="always")


def _row(report, layer, quantity):
    rows = [r for r in report.rows if r.layer == layer and r.quantity == quantity]
    assert len(rows) == 1, [(r.layer, r.quantity) for r in report.rows]
    return rows[0]


def _unscaled(row):
    """The row's tolerance was not widened for cancellation."""
    return row.tolerance_scale in (None, 1.0)


def _compared(report):
    return [r for r in report.rows if r.status != "native"]


def test_contract_tolerances():
    """The floors the low-precision rule adds; the float64 one is the float64 tolerance itself."""
    assert FLOOR[torch.float64] == F64_RTOL
    assert (FLOOR[torch.float32], FLOOR[torch.bfloat16], FLOOR[torch.float16]) == (1e-5, 2e-2, 2e-3)


def test_the_planted_layer_is_judged_by_the_plain_tolerance(planted):
    report = _audit(torch.float64)
    assert report.ok, str(report)
    for quantity in ("weight", "grad_input"):
        row = _row(report, "planted", quantity)
        assert row.status == "ok" and row.tolerance == F64_RTOL and _unscaled(row), row


# -- float64: rel_err <= 1e-10 ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["weight", "input"])
@pytest.mark.parametrize("side", ["above", "below"])
def test_float64_edge(planted, where, side):
    eps = F64_RTOL * (1.2 if side == "above" else 0.8)
    planted[where] = eps
    report = _audit(torch.float64)
    row = _row(report, "planted", "weight" if where == "weight" else "grad_input")
    assert math.isclose(row.rel_err, eps, rel_tol=1e-3), row  # the planted error, as measured
    if side == "above":
        assert not report.ok and row.status == "fail", str(report)
        assert report.first_divergence == "planted", str(report)
    else:
        assert report.ok and row.status == "ok", str(report)
        assert report.first_divergence is None


def test_assert_gradients_match_at_the_float64_edge(planted):
    planted["weight"] = 0.8 * F64_RTOL
    torchbp.assert_gradients_match(_net(), _inputs(), dtype=torch.float64)
    planted["weight"] = 1.2 * F64_RTOL
    with pytest.raises(AssertionError, match="planted"):
        torchbp.assert_gradients_match(_net(), _inputs(), dtype=torch.float64)


# -- below float64: err(subject, oracle) <= 2·err(native, oracle) + floor(dtype) ------------------------

def _contract_tolerance(row, dtype):
    assert row.native_rel_err is not None and math.isfinite(row.native_rel_err), row
    return 2 * row.native_rel_err + FLOOR[dtype]


@pytest.mark.parametrize("dtype", LOW, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("where", ["weight", "input"])
def test_low_precision_edge(planted, dtype, where):
    quantity = "weight" if where == "weight" else "grad_input"
    clean = _audit(dtype)
    assert clean.ok, str(clean)
    row = _row(clean, "planted", quantity)
    assert _unscaled(row), row
    tol, err0 = _contract_tolerance(row, dtype), row.rel_err  # err0: the correct twin's own rounding
    assert err0 <= tol / 2, row  # room between the correct result and the edge
    # |ε − err0| <= err(subject, oracle) <= ε + err0 (to first order): plant past the edge either way
    for eps, should_pass in ((1.3 * (tol + err0), False), (0.7 * (tol - err0), True)):
        planted[where] = eps
        report = _audit(dtype)
        row = _row(report, "planted", quantity)
        assert abs(_contract_tolerance(row, dtype) - tol) <= 1e-6 * tol  # native's error did not move
        assert (row.rel_err <= tol) is should_pass, (eps, row)
        assert report.ok is should_pass and (row.status == "ok") is should_pass, (eps, str(report))
        if not should_pass:
            assert report.first_divergence == "planted", str(report)


# -- correct models sit far below the tolerance ---------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))


CORRECT = {
    "mlp": (_mlp, lambda: torch.randn(8, 6, generator=torch.Generator().manual_seed(1))),
    "cnn": (_cnn, lambda: torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))),
    "planted_at_zero": (_net, _inputs),
}


@pytest.mark.parametrize("name", CORRECT)
def test_correct_models_sit_far_below_float64_tolerance(planted, name):
    make, inputs = CORRECT[name]
    report = torchbp.audit(make(), inputs(), dtype=torch.float64)
    assert report.ok, str(report)
    compared = [r for r in _compared(report) if r.ref_norm > 0]
    assert len(compared) >= 6
    worst = max(compared, key=lambda r: r.rel_err / r.tolerance)
    assert worst.rel_err / worst.tolerance < 1e-2, worst
    # a correct formula is rounding off, not 1e-10 off
    assert max(r.rel_err for r in compared if _unscaled(r)) < 1e-12


@pytest.mark.parametrize("dtype", LOW, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", CORRECT)
def test_correct_models_pass_the_low_precision_rule_with_room(planted, name, dtype):
    make, inputs = CORRECT[name]
    report = torchbp.audit(make(), inputs(), dtype=dtype, oracle="always")
    assert report.ok, str(report)
    checked = [r for r in _compared(report) if r.ref_norm > 0 and _unscaled(r)]
    assert len(checked) >= 4
    for row in checked:
        assert row.rel_err <= 0.75 * _contract_tolerance(row, dtype), row
