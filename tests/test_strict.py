"""``swap(model, strict=True)``: a module is a problem only where a parameter gradient would come from native
autograd. Modules with parameters and no registered twin get routed twins (their own forward under
manual_backward); strict raises, naming module, parameter and op, exactly where the audit's coverage would
fall below 1, and agrees with it everywhere else."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import torchbp
from torchbp import registry

D = torch.float64


class Scale(torch.nn.Module):  # a model's own layer: tensor ops only, all with δ formulas
    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.linspace(0.5, 1.5, 3, dtype=D))

    def forward(self, x):
        return x * self.s.view(1, 3)


class MyLinear(torch.nn.Linear):  # a user's subclass with its own forward
    def forward(self, x):
        return super().forward(x) * 2


class ClassToken(torch.nn.Module):  # ViT's class token and position embedding
    def __init__(self):
        super().__init__()
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 3, dtype=D))
        self.pos = torch.nn.Parameter(torch.randn(1, 3, 3, dtype=D))
        self.inner = torch.nn.Linear(3, 3, dtype=D)

    def forward(self, x):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x[:, None, :].expand(-1, 2, -1)], 1) + self.pos
        return self.inner(x).sum(1)


class Native(torch.nn.Module):  # a parameter meets an op with no δ formula (an aten op called directly)
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3, dtype=D))

    def forward(self, x):
        return torch.ops.aten.mul.Tensor(x, self.w.to(D))


def _model(last):
    return torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=D), Scale(), torch.nn.Sequential(MyLinear(3, 3, dtype=D)),
                               ClassToken(), last)


def test_strict_routes_composites_and_agrees_with_the_audit():
    model = _model(torch.nn.Tanh())
    native = [type(m) for m in model.modules()]
    x = torch.randn(5, 4, dtype=D)
    r = torchbp.audit(model, x)
    assert r.ok and r.coverage == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left native: no warning
        torchbp.swap(model, strict=True)
    assert [registry.native_for(type(m)) or type(m) for m in model.modules()] == native
    assert isinstance(model[1], Scale) and type(model[1]).__name__ == "Scale" and "Scale[δ]" in str(model)
    # plain swapped training, no manual_backward: every parameter gets a δ gradient equal to native's
    out = model(x)
    from torchbp.checker.passes import coverage_walk
    cov, _, reached = coverage_walk(out.sum(), list(model.parameters()))
    assert cov == reached and len(reached) == len(list(model.parameters()))
    got = torch.autograd.grad(out.sum(), list(model.parameters()))
    torchbp.unswap(model)
    assert [type(m) for m in model.modules()] == native
    want = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(got, want))
    # the audit of a strictly swapped model still compares with native autograd (the reference pass restores
    # the native classes), and it is as it was afterwards
    torchbp.swap(model, strict=True)
    r = torchbp.audit(model, x)
    assert r.ok and r.coverage == 1.0 and type(model[1]) is not Scale
    torchbp.unswap(model)


def test_strict_fails_where_a_parameter_meets_an_op_without_delta_and_the_audit_agrees():
    model = _model(Native())
    x = torch.randn(5, 4, dtype=D)
    r = torchbp.audit(model, x)
    assert r.coverage < 1.0 and [row.status for row in r.rows if row.layer == "4" and row.quantity == "w"] == ["native"]
    torchbp.swap(model, strict=True)  # swapping succeeds: whether a parameter meets native autograd shows in forward
    with pytest.raises(TypeError, match=r"Native's parameter 'w' meets aten::mul\.Tensor, which has no δ formula"):
        model(x)
    with torch.no_grad():  # no gradient, nothing to check
        model(x)
    torchbp.unswap(model)
    assert type(model[4]) is Native


def test_strict_twins_restored_by_swapped_and_plain_swap_unchanged():
    model = _model(torch.nn.Tanh())
    with torchbp.swapped(model, strict=True):
        assert registry.native_for(type(model[1])) is Scale
    assert type(model[1]) is Scale and type(model[0]) is torch.nn.Linear
    with pytest.warns(UserWarning, match="left native"):
        torchbp.swap(model)  # without strict: left native, as before (manual_backward still routes their ops)
    assert type(model[1]) is Scale
    assert pickle.loads(pickle.dumps(torchbp.unswap(model)))[1].s.shape == (3,)
