"""δ linear and bilinear (torchbp.functional.linear) beyond the common matrix (tests/cases/linear.py drives
float64, gradcheck, low precision, autocast, vmap, routing, nn.Linear's twin and the refused inputs):
non-contiguous inputs, mixed-dtype autocast, models under autocast, vmap and double backward, torch.compile,
DeltaFunction.apply's fast path, bilinear's twin and partial gradients, jacrev, routes of operators."""
import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases.linear import bilinear_args as _bilinear_args
from util import DEVICES, assert_matches_native, is_delta as _is_delta


def test_linear_noncontiguous_and_no_input_grad():
    x = torch.randn(5, 4, dtype=torch.float64).t()  # non-contiguous, needs no grad
    W = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.linear, F.linear, (x, W))


def test_cpu_autocast_bf16_mlp():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4),
                                torch.nn.LogSoftmax(-1))
    x = torch.randn(5, 8)
    twin = torchbp.swap(__import__("copy").deepcopy(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yn, ys = model(x), twin(x)
    assert yn.dtype == ys.dtype
    torch.testing.assert_close(ys, yn)
    gn = torch.autograd.grad(yn.sum(), list(model.parameters()))
    gs = torch.autograd.grad(ys.sum(), list(twin.parameters()))
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


def test_vmap_and_double_backward_through_mlp():
    model = torchbp.swap(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    native = torchbp.unswap(__import__("copy").deepcopy(model))
    xn = x.detach().requires_grad_()
    (gxn,) = torch.autograd.grad(native(xn).sum(), xn, create_graph=True)
    torch.testing.assert_close(gx, gxn)
    p = next(model.parameters())
    torch.testing.assert_close(torch.autograd.grad(gx.pow(2).sum(), p)[0],
                               torch.autograd.grad(gxn.pow(2).sum(), next(native.parameters()))[0])
    per_example = torch.func.vmap(torch.func.grad(lambda xi: tbf.tanh(xi).sum()))(x.detach())
    torch.testing.assert_close(per_example, 1 - torch.tanh(x.detach()) ** 2)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)])
def test_linear_output_allows_inplace_activation(shape):
    # F.linear returns a view for ranks other than 2; an in-place ReLU on a view made inside a
    # custom Function would raise, so the δ linear must hand back something modifiable
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(inplace=True)).double()
    x = torch.randn(shape, dtype=torch.float64)
    (native,) = torch.autograd.grad(model(x).pow(2).sum(), [model[0].weight])
    with torchbp.swapped(model):
        (ours,) = torch.autograd.grad(model(x).pow(2).sum(), [model[0].weight])
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=0)


# --- DeltaFunction.apply's fast path (torch's Function.apply without its per-call signature binding) ---

def test_fast_apply_matches_torch_apply():
    from torchbp.functional._common import DeltaFunction
    from torchbp.functional.linear import Linear

    assert Linear._bind_free
    x, W, b = (torch.randn(4, 5, dtype=torch.float64, requires_grad=True), torch.randn(3, 5, dtype=torch.float64,
               requires_grad=True), torch.randn(3, dtype=torch.float64, requires_grad=True))
    fast = Linear.apply(x, W, b)
    torch_apply = vars(torch.autograd.Function)["apply"].__get__(None, Linear)  # torch's own apply, bound to
    slow = torch_apply(x, W, b)  # Linear (a classmethod in Python before torch 2.14, in C++ from 2.14 on)
    assert type(fast.grad_fn) is type(slow.grad_fn) and type(fast.grad_fn)._forward_cls is Linear
    assert torch.equal(fast, slow)
    assert all(torch.equal(p, q) for p, q in zip(torch.autograd.grad(fast.sum(), (x, W, b)),
                                                 torch.autograd.grad(slow.sum(), (x, W, b))))

    class WithDefault(DeltaFunction):  # binding is not the identity here: torch's path fills the default
        @staticmethod
        def forward(z, k=3.0):
            return z * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.k = inputs[1]

        @staticmethod
        def backward(ctx, g):
            return g * ctx.k, None

    assert not WithDefault._bind_free
    z = torch.ones(2, requires_grad=True)
    (gz,) = torch.autograd.grad(WithDefault.apply(z).sum(), z)
    assert torch.equal(gz, torch.full((2,), 3.0))
    (gz,) = torch.autograd.grad(WithDefault.apply(z, k=2.0).sum(), z)  # keyword args: torch's path
    assert torch.equal(gz, torch.full((2,), 2.0))


def test_linear_dead_wrappers():
    W = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    # (per-example gradients of a shared weight under vmap: the matrix's VMAP check)
    # a tensor that escapes a functorch transform (a dead wrapper) is unwrapped as torch's apply does
    escaped = []
    torch.func.grad(lambda w: escaped.append(w) or (w * 2).sum())(W)
    y = tbf.linear(x, escaped[0])
    torch.testing.assert_close(y, F.linear(x, W), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_swapped_mlp_under_torch_compile(backend):
    try:
        dynamo = __import__("importlib").import_module("torch._dynamo")
        supported = hasattr(torch, "compile") and dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 - any failure to import means no torch.compile here
        supported = False
    if not supported:
        pytest.skip("torch.compile unavailable")
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 8),
                                torch.nn.LeakyReLU(0.1), torch.nn.Linear(8, 3)).double()
    twin = torchbp.swap(__import__("copy").deepcopy(model))
    x = torch.randn(4, 5, dtype=torch.float64)
    ref = torch.autograd.grad(twin(x).pow(2).sum(), list(twin.parameters()))
    dynamo.reset()
    try:
        got = torch.autograd.grad(torch.compile(twin, backend=backend)(x).pow(2).sum(), list(twin.parameters()))
    finally:
        dynamo.reset()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_autocast_switch_restored_after_an_error():
    from torchbp.functional._common import LOWER, DeltaFunction, _autocast_state, apply

    class Boom(DeltaFunction):
        @staticmethod
        def forward(z):
            assert _autocast_state("cpu") is None  # the Function runs with autocast off
            raise ValueError("boom")

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="boom"):
            apply(Boom, LOWER, torch.randn(2, requires_grad=True))
        assert _autocast_state("cpu") == torch.bfloat16
    assert _autocast_state("cpu") is None


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_swapped_mlp_under_torch_compile_and_autocast(backend):
    try:
        dynamo = __import__("importlib").import_module("torch._dynamo")
        supported = hasattr(torch, "compile") and dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001
        supported = False
    if not supported:
        pytest.skip("torch.compile unavailable")
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    twin = torchbp.swap(__import__("copy").deepcopy(model))
    x = torch.randn(4, 5)

    def grads(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        return torch.autograd.grad(out.float().pow(2).sum(), list(twin.parameters()))

    ref = grads(twin)
    dynamo.reset()
    try:
        got = grads(torch.compile(twin, backend=backend))
    finally:
        dynamo.reset()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("grads", ["x", "w", "b", "wb"])
def test_bilinear_any_subset_of_grads_and_noncontiguous(grads):
    x1, x2, W, b = _bilinear_args((4,), grads=grads)
    x1 = torch.randn(5, 4, dtype=torch.float64).t().requires_grad_("x" in grads)  # non-contiguous
    W = torch.randn(6, 3, 5, dtype=torch.float64).transpose(1, 2).requires_grad_("w" in grads)
    assert_matches_native(tbf.bilinear, F.bilinear, (x1, x2, W, b))
    only_x2 = (x1.detach(), x2.detach().requires_grad_(), W.detach(), None)
    assert_matches_native(tbf.bilinear, F.bilinear, only_x2)


@pytest.mark.parametrize("device", DEVICES)
def test_bilinear_autocast_dtypes_follow_native(device):
    """CPU autocast leaves bilinear alone; CUDA autocast promotes its inputs to the widest dtype."""
    low = torch.bfloat16 if device == "cpu" else torch.float16
    x1, x2 = torch.randn(4, 5, device=device), torch.randn(4, 3, device=device)
    W, b = torch.randn(6, 5, 3, device=device, requires_grad=True), torch.randn(6, device=device)
    cases = [(x1, x2, W, b), (x1.to(low), x2.to(low), W.to(low), b.to(low))]
    if device == "cuda":
        cases.append((x1.to(low), x2, W, b.to(low)))  # mixed: promoted to float32
    for args in cases:
        with torch.autocast(device, dtype=low):
            ys, yn = tbf.bilinear(*args), F.bilinear(*args)
        assert ys.dtype == yn.dtype
        torch.testing.assert_close(ys, yn)
        gs, gn = torch.autograd.grad(ys.float().sum(), W), torch.autograd.grad(yn.float().sum(), W)
        torch.testing.assert_close(gs, gn, rtol=2e-2, atol=2e-2)


def test_bilinear_twin_swapped_and_audited():
    import copy
    from torchbp.functional.linear import Bilinear
    native = torch.nn.Bilinear(5, 3, 4).double()
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is torchbp.nn.Bilinear and isinstance(twin, torch.nn.Bilinear) and repr(twin) == repr(native).replace("(", "[δ](", 1)
    x1, x2 = torch.randn(2, 7, 5, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    ys, yn = twin(x1, x2), native(x1, x2)
    assert type(twin(x1[0], x2[0]).grad_fn)._forward_cls is Bilinear
    torch.testing.assert_close(ys, yn, rtol=1e-13, atol=0)
    v = torch.randn_like(yn)
    for a, b in zip(torch.autograd.grad(ys, list(twin.parameters()), v),
                    torch.autograd.grad(yn, list(native.parameters()), v)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)

    class Relation(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 3)
            self.rel, self.out = torch.nn.Bilinear(5, 3, 4), torch.nn.Linear(4, 2)

        def forward(self, x, y):
            return self.out(torch.tanh(self.rel(self.a(x), self.b(y))))

    torch.manual_seed(0)
    r = torchbp.audit(Relation().double(), (torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)))
    assert r.ok and r.coverage == 1.0, str(r)
    assert any(row.kind == "Bilinear" and row.quantity == "weight" for row in r.rows)


def test_bilinear_routes_under_manual_backward():
    """nn.Bilinear's two-input call routed (F.bilinear and torch.bilinear: the matrix's ROUTE check)."""
    from torchbp.functional.linear import Bilinear
    x1, x2, W, b = (t.double().detach().requires_grad_() for t in _bilinear_args((3,)))
    module = torch.nn.Bilinear(5, 3, 6).double()
    calls = [(lambda: module(x1, x2), [x1, *module.parameters()])]
    for f, leaves in calls:
        yn = f()
        with torchbp.manual_backward():
            ys = f()
        assert type(ys.grad_fn)._forward_cls is Bilinear and torch.equal(ys, yn)
        v = torch.randn_like(yn)
        for a, c in zip(torch.autograd.grad(ys, leaves, v), torch.autograd.grad(yn, leaves, v)):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


def test_bilinear_mixed_dtypes_under_cpu_autocast_refused():
    x1, x2, W = torch.randn(4, 5), torch.randn(4, 3), torch.randn(6, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast does not promote: one dtype, as native
        with pytest.raises(RuntimeError, match="bilinear: all tensors must have one dtype"):
            tbf.bilinear(x1, x2.bfloat16(), W)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # no batching rule for aten::bilinear
def test_bilinear_under_jacrev():
    # batched δ into unbatched inputs (per-example gradients under vmap: the matrix's VMAP check)
    x1, x2, W, b = (t.double().detach() for t in _bilinear_args((4,)))
    for argnums in (0, 1, 2, 3):
        torch.testing.assert_close(torch.func.jacrev(tbf.bilinear, argnums=argnums)(x1[0], x2[0], W, b),
                                   torch.func.jacrev(F.bilinear, argnums=argnums)(x1[0], x2[0], W, b),
                                   rtol=1e-12, atol=0)


# --- the linear family as torch ops (matmul, mm, bmm, addmm) -----------------------------------------------

def test_matmul_noncontiguous_and_one_side_grad():
    A = torch.randn(2, 5, 3).transpose(1, 2).requires_grad_()  # (2, 3, 5), non-contiguous
    B = torch.randn(4, 5).t()  # (5, 4), non-contiguous, no grad
    assert_matches_native(tbf.matmul, torch.matmul, (A, B))
    assert_matches_native(tbf.matmul, torch.matmul, (A.detach(), torch.randn(5, 4, requires_grad=True)))


def test_manual_backward_routes_matmul_family():
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(4, 5)
    with torchbp.manual_backward():
        outs = {"a @ b": a @ b, "b.T.__rmatmul__": torch.Tensor.__rmatmul__(b, a), "Tensor.matmul": a.matmul(b),
                "torch.matmul": torch.matmul(a, b), "torch.mm": torch.mm(a, b), "Tensor.mm": a.mm(b),
                "torch.bmm": torch.bmm(a[None], b[None]), "Tensor.bmm": a[None].bmm(b[None]),
                "torch.addmm": torch.addmm(torch.zeros(5), a, b), "Tensor.addmm": torch.zeros(3, 5).addmm(a, b),
                "sdpa": F.scaled_dot_product_attention(a[None], a[None], a[None])}
        no_grad_needed = a.detach() @ b
    for name, y in outs.items():
        assert _is_delta(y), (name, type(y.grad_fn).__name__)
        assert type(y.grad_fn)._forward_cls.__module__.startswith("torchbp."), name
    assert no_grad_needed.grad_fn is None
    (gs,) = torch.autograd.grad(sum(y.sum() for y in outs.values()), a)
    native = [a @ b, a @ b, a @ b, a @ b, a @ b, a @ b, torch.bmm(a[None], b[None]), a[None].bmm(b[None]),
              torch.addmm(torch.zeros(5), a, b), torch.zeros(3, 5).addmm(a, b),
              F.scaled_dot_product_attention(a[None], a[None], a[None])]
    (gn,) = torch.autograd.grad(sum(y.sum() for y in native), a)
    torch.testing.assert_close(gs, gn)


def test_matmul_family_builds_its_error_messages_only_on_failure(monkeypatch):
    """The checks run on every call (routed models call matmul many times a step): a valid call formats
    no message."""
    import sys
    lin = sys.modules["torchbp.functional.linear"]  # (the package's ``linear`` attribute is the function)

    def no_message(*a, **k):
        raise AssertionError("a message was built for a valid call")

    monkeypatch.setattr(lin, "_shape_error", no_message)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert torch.equal(tbf.matmul(a, b), torch.matmul(a, b))
    assert torch.equal(tbf.bmm(a, b), torch.bmm(a, b))
    assert torch.equal(tbf.matmul(a, b[0]), torch.matmul(a, b[0]))
    with pytest.raises(AssertionError, match="a message was built"):
        tbf.matmul(a, torch.randn(2, 5, 4))
