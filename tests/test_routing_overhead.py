"""The routing's per-call work: δ Functions take the fast apply (no per-call signature binding) wherever
binding is the identity, structure ops pass through ``manual_backward`` as native calls, and calls that
build no graph stay native."""
from __future__ import annotations

import inspect

import pytest
import torch

import torchbp
from torchbp.functional import pointwise
from torchbp.functional._common import DeltaFunction
from torchbp.intercept import _needs_grad


class _NoBinding:
    """Counts inspect.signature calls (torch's Function.apply binds its args with it on every call)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = inspect.signature

        def counting(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(inspect, "signature", counting)


@pytest.mark.parametrize("op", [lambda x, y: x * y, lambda x, y: x + y, lambda x, y: torch.sub(x, y),
                                lambda x, y: x.pow(2)], ids=["mul", "add", "sub", "pow"])
def test_elementwise_functions_take_the_fast_apply(op, monkeypatch):
    """The elementwise family's forward(*args) is given to each class after DeltaFunction's
    __init_subclass__ has run: the fast apply still sees it (first call), and later calls bind nothing."""
    x, y = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    with torchbp.manual_backward():
        op(x, y)
        probe = _NoBinding(monkeypatch)
        out = op(x, y)
        routed = probe.calls
    assert type(out.grad_fn)._forward_cls.__module__ == pointwise.__name__
    # what torch's C-level apply binds by itself (torch >= 2.14 binds every call there): no more than that
    probe.calls = 0
    super(torch.autograd.Function, _Plain).apply(x, y)
    assert routed == probe.calls
    assert pointwise.Mul._bind_free is True


class _Plain(torch.autograd.Function):
    """A Function whose forward binds as the identity, called through torch's C-level apply alone."""

    @staticmethod
    def forward(a, b):
        return a * b

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g, g


def test_fast_apply_resolves_a_forward_given_after_class_creation():
    class Late(DeltaFunction):
        pass

    assert Late._bind_free is None  # no forward of its own yet

    def forward(z, k=3.0):  # a default: torch's binding fills it, so the fast path must not run
        return z * k

    Late.forward = staticmethod(forward)
    Late.setup_context = staticmethod(lambda ctx, inputs, output: setattr(ctx, "k", inputs[1]))
    Late.backward = staticmethod(lambda ctx, g: (g * ctx.k, None))
    z = torch.ones(2, requires_grad=True)
    (gz,) = torch.autograd.grad(Late.apply(z).sum(), z)
    assert Late._bind_free is False
    assert torch.equal(gz, torch.full((2,), 3.0))


def test_structure_ops_pass_through_natively():
    x = torch.randn(4, 6, requires_grad=True)
    with torchbp.manual_backward():
        outs = [x.view(24), x.transpose(0, 1), x.reshape(2, 12), x.unsqueeze(0), x[1:], x.float()]
        shape, dtype = x.shape, x.dtype
    assert shape == (4, 6) and dtype == torch.float32
    for o in outs:
        assert o.grad_fn is None or not hasattr(type(o.grad_fn), "_forward_cls") \
            or not issubclass(type(o.grad_fn)._forward_cls, DeltaFunction)


def test_calls_without_a_graph_stay_native():
    x = torch.randn(3)
    with torchbp.manual_backward():
        assert (x * x).grad_fn is None
        w = torch.randn(3, requires_grad=True)
        with torch.no_grad():
            assert (w * x).grad_fn is None
        assert type((w * x).grad_fn)._forward_cls is pointwise.Mul


@pytest.mark.parametrize("args,kwargs,expected", [
    ((torch.ones(2),), None, False),
    ((torch.ones(2), torch.ones(2, requires_grad=True)), None, True),
    (([torch.ones(2), torch.ones(2, requires_grad=True)],), None, True),  # torch.cat's list
    (((torch.ones(2),),), None, False),
    ((torch.ones(2),), {}, False),
    ((torch.ones(2),), {"weight": torch.ones(2, requires_grad=True)}, True),
    ((1.0, "x"), {"other": 2}, False),
])
def test_needs_grad(args, kwargs, expected):
    assert _needs_grad(args, kwargs) is expected


@pytest.mark.parametrize("op", [pointwise.Add, pointwise.Mul, pointwise.Div, pointwise.Where, pointwise.Clamp])
def test_elementwise_forward_is_the_ops_own_function(op):
    """An elementwise Function's forward is its ``f`` itself: no wrapper frame on every routed call (a builtin
    such as torch.exp keeps one: a forward needs a signature torch can bind)."""
    assert op.forward is op.f
    assert pointwise.Exp.forward is not torch.exp and pointwise.Exp._bind_free in (None, True)


def test_elementwise_context_keeps_shapes_and_constants_only():
    """setup_context keeps what backward reads: saved tensors (inputs only for ops whose δ reads them) and the
    inputs' shapes and constants, not the input tensors themselves."""
    x, y = torch.randn(2, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    out = pointwise.Mul.apply(x, y)
    assert out.grad_fn.meta == (x.shape, y.shape)
    out = pointwise.Add.apply(x, y, 2)
    assert out.grad_fn.meta == (x.shape, y.shape, 2) and len(out.grad_fn.saved_tensors) == 1
    gx, gy = torch.autograd.grad(out, (x, y), torch.ones(2, 3))
    assert torch.equal(gx, torch.ones(2, 3)) and torch.equal(gy, torch.full((3,), 4.0))


def test_route_overhead_script_prices_forward_and_backward(capsys):
    """scripts/route_overhead.py --backward: per-call prices, routed beside native and a bare Python Function."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "route_overhead.py"
    spec = importlib.util.spec_from_file_location("route_overhead", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--calls", "20", "--backward"]) == 0
    out = capsys.readouterr().out
    assert "x * x (routed)" in out and "bare Function" in out and "routed" in out.splitlines()[-1]
    costs = script.backward_costs(20)
    assert set(costs) == {"native", "bare Function", "routed"}


def test_a_routed_linear_queries_each_tensor_once():
    """Under manual_backward every tensor query (x.shape, x.dtype, x.dim(), ...) is a call through the mode, a
    Python call each: linear's checks read each shape and each device and dtype once. 12 calls: 6 device and
    dtype reads, 3 shapes, 2 reshapes (leading dims folded outside the Function) and the product inside it."""
    from torchbp import intercept

    class Counting(intercept._Router):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Counting.calls += 1
            return super().__torch_function__(func, types, args, kwargs)

    x, w, b = torch.randn(2, 3, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    with Counting():
        torchbp.functional.linear(x, w, b)
    assert Counting.calls <= 12
