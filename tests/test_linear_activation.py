"""δ linear and activations against native autograd: float64 exact-ish, gradcheck, low precision."""
import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import DEVICES, LOW, assert_matches_native, gradchecks

LINEAR_SHAPES = [(5,), (4, 5), (2, 3, 5), (2, 1, 3, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_float64(shape, bias, device):
    x = torch.randn(shape, requires_grad=True)
    W = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    assert_matches_native(tbf.linear, F.linear, (x, W, b), device=device)


def test_linear_noncontiguous_and_no_input_grad():
    x = torch.randn(5, 4, dtype=torch.float64).t()  # non-contiguous, needs no grad
    W = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.linear, F.linear, (x, W))


def test_linear_gradcheck():
    gradchecks(tbf.linear, (torch.randn(2, 3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True),
                            torch.randn(4, requires_grad=True)))
    gradchecks(tbf.linear, (torch.randn(3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True), None))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_linear_low_precision(dtype, device):
    args = (torch.randn(8, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True),
            torch.randn(16, requires_grad=True))
    assert_matches_native(tbf.linear, F.linear, args, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    x = torch.randn(4, 8, device=device, requires_grad=True)
    layer = torch.nn.Linear(8, 3, device=device)
    twin = torchbp.swap(torch.nn.Linear(8, 3, device=device))
    twin.load_state_dict(layer.state_dict())
    with torch.autocast(device, dtype=dtype):
        yn, ys = layer(x), twin(x)
    assert yn.dtype == ys.dtype == dtype
    assert torch.equal(yn, ys)
    gn = torch.autograd.grad(yn.float().sum(), [x, *layer.parameters()])
    gs = torch.autograd.grad(ys.float().sum(), [x, *twin.parameters()])
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_linear_bad_input_names_op():
    with pytest.raises(RuntimeError, match=r"torchbp.functional.linear: input has 4 features"):
        tbf.linear(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"linear: weight has dtype torch.float64"):
        tbf.linear(torch.randn(3, 5), torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"linear: bias must have shape \[2\]"):
        tbf.linear(torch.randn(3, 5), torch.randn(2, 5), torch.randn(3))


ACTIVATIONS = [  # (ours, native, kwargs)
    (tbf.sigmoid, torch.sigmoid, {}),
    (tbf.tanh, torch.tanh, {}),
    (tbf.relu, F.relu, {}),
    (tbf.leaky_relu, F.leaky_relu, {}),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 0.2}),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": -0.3}),
    (tbf.elu, F.elu, {}),
    (tbf.elu, F.elu, {"alpha": 0.5}),
    (tbf.gelu, F.gelu, {}),
    (tbf.gelu, F.gelu, {"approximate": "tanh"}),
    (tbf.silu, F.silu, {}),
    (tbf.softplus, F.softplus, {}),
    (tbf.softplus, F.softplus, {"beta": 2.0, "threshold": 1.0}),
    (tbf.hardtanh, F.hardtanh, {}),
    (tbf.hardtanh, F.hardtanh, {"min_val": -0.5, "max_val": 2.0}),
    (tbf.relu6, F.relu6, {}),
    (tbf.softmax, F.softmax, {"dim": -1}),
    (tbf.softmax, F.softmax, {"dim": 0}),
    (tbf.softmax, F.softmax, {"dim": 1}),
    (tbf.log_softmax, F.log_softmax, {"dim": -1}),
    (tbf.log_softmax, F.log_softmax, {"dim": 1}),
    (tbf.hardswish, F.hardswish, {}),
    (tbf.hardsigmoid, F.hardsigmoid, {}),
    (tbf.mish, F.mish, {}),
    (tbf.selu, F.selu, {}),
    (tbf.celu, F.celu, {}),
    (tbf.celu, F.celu, {"alpha": 0.5}),
    (tbf.celu, F.celu, {"alpha": -1.5}),
    (tbf.celu, F.celu, {"alpha": 0.7}),  # no float32 number: native's 1/α is rounded (see CELU)
    (tbf.logsigmoid, F.logsigmoid, {}),
    (tbf.softsign, F.softsign, {}),
    (tbf.tanhshrink, F.tanhshrink, {}),
    (tbf.threshold, F.threshold, {"threshold": 1.0, "value": -2.0}),
    (tbf.threshold, F.threshold, {"threshold": 0.3, "value": 5.0}),
    (tbf.hardshrink, F.hardshrink, {}),
    (tbf.hardshrink, F.hardshrink, {"lambd": 1.0}),
    (tbf.softshrink, F.softshrink, {}),
    (tbf.softshrink, F.softshrink, {"lambd": 1.0}),
    (tbf.softmin, F.softmin, {"dim": -1}),
    (tbf.softmin, F.softmin, {"dim": 1}),
]
IDS = [f"{o.__name__}{k or ''}" for o, _, k in ACTIVATIONS]


def _input(shape=(3, 4, 5)):
    x = torch.randn(shape) * 3
    x.view(-1)[:4] = torch.tensor([0.0, 1.0, -1.0, 6.0])  # kinks / boundaries included
    return x.requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,native,kw", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (3, 4, 5)])
def test_activation_float64(ours, native, kw, shape, device):
    if kw.get("dim") == 1 and len(shape) < 2:
        pytest.skip("dim out of range for 1-D")
    assert_matches_native(ours, native, (_input(shape),), kw, device=device)


@pytest.mark.parametrize("ours,native,kw", ACTIVATIONS, ids=IDS)
def test_activation_gradcheck(ours, native, kw):
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    x = x + 0.1 * x.sign()  # keep away from kinks, where finite differences are meaningless
    gradchecks(ours, (x.requires_grad_(),), kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("ours,native,kw", ACTIVATIONS, ids=IDS)
def test_activation_low_precision(ours, native, kw, dtype, device):
    assert_matches_native(ours, native, (torch.randn(16, 33, requires_grad=True),), kw, dtype=dtype, device=device)


INPLACE = [(tbf.relu, F.relu, {}), (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 0.1}),
           (tbf.elu, F.elu, {}), (tbf.hardtanh, F.hardtanh, {}), (tbf.relu6, F.relu6, {}),
           (tbf.silu, F.silu, {}), (tbf.hardswish, F.hardswish, {}), (tbf.hardsigmoid, F.hardsigmoid, {}),
           (tbf.mish, F.mish, {}), (tbf.selu, F.selu, {}), (tbf.celu, F.celu, {}),
           (tbf.threshold, F.threshold, {"threshold": 1.0, "value": -2.0}),
           (tbf.threshold, F.threshold, {"threshold": 0.3, "value": 5.0})]  # value > threshold: f' from z


@pytest.mark.parametrize("ours,native,kw", INPLACE, ids=[o.__name__ for o, _, _ in INPLACE])
def test_activation_inplace(ours, native, kw):
    x = _input()

    leaf_s = x.detach().double().requires_grad_()
    leaf_n = x.detach().double().requires_grad_()
    for fn, leaf in ((ours, leaf_s), (native, leaf_n)):
        h = leaf * 1.0
        out = fn(h, inplace=True, **kw)
        assert out.data_ptr() == h.data_ptr()
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    torch.testing.assert_close(leaf_s.grad, leaf_n.grad, rtol=1e-12, atol=1e-12)


def test_inplace_on_leaf_is_refused_like_native():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError):
        tbf.relu(x, inplace=True)
    with pytest.raises(RuntimeError):
        F.relu(x, inplace=True)


def test_activation_rejects_integer_input():
    with pytest.raises(RuntimeError, match="torchbp.functional.sigmoid: input must be floating point"):
        tbf.sigmoid(torch.arange(3))


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


def _around(*points):
    """float64 points, their neighbours one ulp away on both sides, ±0, subnormals and large values."""
    p = torch.tensor(points, dtype=torch.float64)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    return torch.cat([p, torch.nextafter(p, inf), torch.nextafter(p, -inf),
                      torch.tensor([0.0, -0.0, 1e-300, -1e-300, 5e-324, -5e-324, 3.0, -3.0, 1e300, -1e300],
                                   dtype=torch.float64)])


KINKS = [  # (ours, native, kwargs, points where f' jumps); the CPU δ of these avoids torch.where
    (tbf.relu, F.relu, {}, (0.0,)),
    (tbf.leaky_relu, F.leaky_relu, {}, (0.0,)),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 0.0}, (0.0,)),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 1.0}, (0.0,)),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 1.5}, (0.0,)),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": -0.3}, (0.0,)),
    (tbf.elu, F.elu, {}, (0.0,)),
    (tbf.elu, F.elu, {"alpha": 0.5}, (0.0,)),
    (tbf.elu, F.elu, {"alpha": 0.0}, (0.0,)),
    (tbf.elu, F.elu, {"alpha": 2.0}, (0.0,)),
    (tbf.hardtanh, F.hardtanh, {}, (-1.0, 1.0)),
    (tbf.hardtanh, F.hardtanh, {"min_val": -0.3, "max_val": 0.7}, (-0.3, 0.7)),
    (tbf.relu6, F.relu6, {}, (0.0, 6.0)),
    (tbf.softplus, F.softplus, {}, (20.0,)),
    (tbf.softplus, F.softplus, {"beta": 2.0, "threshold": 1.0}, (0.5,)),
    (tbf.softplus, F.softplus, {"beta": 0.5, "threshold": -1.0}, (-2.0,)),
    (tbf.hardswish, F.hardswish, {}, (-3.0, 3.0)),
    (tbf.hardsigmoid, F.hardsigmoid, {}, (-3.0, 3.0)),
    (tbf.selu, F.selu, {}, (0.0,)),
    (tbf.celu, F.celu, {}, (0.0,)),
    (tbf.celu, F.celu, {"alpha": 0.5}, (0.0,)),
    (tbf.celu, F.celu, {"alpha": 0.7}, (0.0,)),
    (tbf.threshold, F.threshold, {"threshold": 1.0, "value": -2.0}, (1.0,)),
    (tbf.threshold, F.threshold, {"threshold": 0.3, "value": 5.0}, (0.3,)),
    (tbf.hardshrink, F.hardshrink, {}, (-0.5, 0.5)),
    (tbf.hardshrink, F.hardshrink, {"lambd": 0.3}, (-0.3, 0.3)),
    (tbf.hardshrink, F.hardshrink, {"lambd": -1.0}, (-1.0, 1.0)),
    (tbf.softshrink, F.softshrink, {"lambd": 0.3}, (-0.3, 0.3)),
    (tbf.softshrink, F.softshrink, {"lambd": 0.0}, (0.0,)),
]


@pytest.mark.parametrize("ours,native,kw,points", KINKS, ids=[f"{o.__name__}{k or ''}" for o, _, k, _ in KINKS])
def test_activation_kinks_equal_native_float64(ours, native, kw, points):
    # at a kink f' takes exactly native's branch (0 at hardtanh's bounds, s at leaky_relu's 0, ...), and
    # wherever f' is piecewise constant δ equals native's bitwise; elsewhere (exp, σ) to rounding
    z = _around(*points)
    g = torch.randn_like(z)
    zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
    (gs,) = torch.autograd.grad(ours(zs, **kw), zs, g)
    (gn,) = torch.autograd.grad(native(zn, **kw), zn, g)
    if ours in (tbf.relu, tbf.leaky_relu, tbf.hardtanh, tbf.relu6, tbf.hardsigmoid, tbf.threshold, tbf.hardshrink,
                tbf.softshrink):
        assert torch.equal(gs, gn), (z, gs, gn)
    else:
        flat = (gn == g) | (gn == 0)  # the branches with a constant f' are exact
        assert torch.equal(gs[flat], gn[flat]), (z[flat], gs[flat], gn[flat])
        torch.testing.assert_close(gs, gn, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_gelu_special_values_like_native(dtype):
    """GELU's first-order δ reads Φ(z) as gelu(z)/z: exact ½ at ±0 and subnormals, native's values at large
    |z|, NaN where native's is NaN (±inf, NaN)."""
    z = torch.cat([_around(0.0, -10.0, -30.0, 40.0), torch.tensor([float("inf"), -float("inf"), float("nan")],
                                                                    dtype=torch.float64)]).to(dtype)
    g = torch.randn_like(z)
    zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
    (gs,) = torch.autograd.grad(tbf.gelu(zs), zs, g)
    (gn,) = torch.autograd.grad(F.gelu(zn), zn, g)
    assert torch.equal(gs.isnan(), gn.isnan())
    fin = ~gn.isnan()
    tol = {torch.float64: 1e-13, torch.float32: 1e-6}.get(dtype, 1e-2)
    torch.testing.assert_close(gs[fin], gn[fin], rtol=tol, atol=tol * g.abs().max().item())
    assert torch.equal(gs[z == 0], g[z == 0] * 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_hardtanh_bound_bf16_cannot_hold_takes_natives_branch(device):
    """max_val=0.7 is no bf16 number: z just inside and the clamped output round alike, so f' must
    come from z (as native's) for δ to pass exactly where native's does."""
    z = torch.linspace(0.6, 0.8, 2001, device=device).to(torch.bfloat16)
    g = torch.randn_like(z)
    zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
    (gs,) = torch.autograd.grad(tbf.hardtanh(zs, -0.3, 0.7), zs, g)
    (gn,) = torch.autograd.grad(F.hardtanh(zn, -0.3, 0.7), zn, g)
    assert torch.equal(gs, gn)


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


def test_linear_under_vmap_grad_and_dead_wrappers():
    W = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    per_example = torch.func.vmap(torch.func.grad(lambda w, xi: tbf.sigmoid(tbf.linear(xi, w)).sum()),
                                  in_dims=(None, 0))(W, x)
    native = torch.func.vmap(torch.func.grad(lambda w, xi: torch.sigmoid(F.linear(xi, w)).sum()),
                             in_dims=(None, 0))(W, x)
    torch.testing.assert_close(per_example, native, rtol=1e-12, atol=0)
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


@pytest.mark.parametrize("ours,native,kw", ACTIVATIONS, ids=IDS)
def test_activation_batched_grads_and_jacrev(ours, native, kw):
    # batched δ into the δ formulas' temporaries (scale_ must not write it into an unbatched one)
    z = _input((3, 5)).detach().double().requires_grad_()
    out = ours(z, **kw)
    G = torch.randn(4, *out.shape, dtype=torch.float64)
    (gs,) = torch.autograd.grad(out, z, G, is_grads_batched=True)
    (gn,) = torch.autograd.grad(native(z, **kw), z, G, is_grads_batched=True)
    torch.testing.assert_close(gs, gn, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.func.jacrev(lambda t: ours(t, **kw))(z.detach()),
                               torch.func.jacrev(lambda t: native(t, **kw))(z.detach()), rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "hardtanh", "selu", "celu", "hardswish", "hardsigmoid",
                                  "mish"])
def test_inplace_activation_under_vmap_grad(name):
    """torch.func cannot save an input that a Function returns as its output (mark_dirty): in-place δ
    activations take the out-of-place δ there, still writing into the caller's tensor."""
    fn, native = getattr(tbf, name), getattr(F, name)
    xs = torch.randn(3, 4, dtype=torch.float64)
    ours = torch.func.vmap(torch.func.grad(lambda x: fn(x * 1, inplace=True).square().sum()))(xs)
    ref = torch.func.vmap(torch.func.grad(lambda x: native(x * 1, inplace=True).square().sum()))(xs)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)


# --- PReLU (a weight), GLU (two halves), the bounds of threshold/shrink, twins, routes, audit ------------

PRELU_CASES = [((), 1), ((5,), 1), ((5,), 0), ((4, 3), 1), ((4, 3), 3), ((2, 3, 5), 3), ((2, 3, 4, 4), 3),
               ((2, 3, 4, 4), 1)]  # (input shape, weight elements; 0: a 0-d weight)


def _prelu_args(shape, n):
    x = torch.randn(shape) * 2
    if x.dim():
        x.view(-1)[:2] = torch.tensor([0.0, -0.0])  # the kink: δ_z = w·δ_a there, as native
    w = torch.rand(n) * 0.5 - 0.1 if n else torch.tensor(0.25)
    w.view(-1)[0] = -0.1  # a negative slope too
    return x.requires_grad_(), w.requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,n", PRELU_CASES)
def test_prelu_float64_input_and_weight_grads(shape, n, device):
    assert_matches_native(tbf.prelu, F.prelu, _prelu_args(shape, n), device=device)


@pytest.mark.parametrize("shape,n", PRELU_CASES)
def test_prelu_gradcheck(shape, n):
    _, w = _prelu_args(shape, n)
    x = torch.randn(shape, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # away from the kink
    gradchecks(tbf.prelu, (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n", [1, 8])
def test_prelu_low_precision(n, dtype, device):
    args = (torch.randn(4, 8, 3, 3, requires_grad=True), (torch.rand(n) * 0.5).requires_grad_())
    assert_matches_native(tbf.prelu, F.prelu, args, dtype=dtype, device=device)


def test_prelu_weight_only_and_input_only():
    x, w = _prelu_args((2, 3, 4), 3)
    for needs in [(True, False), (False, True)]:
        xs, ws = x.detach().double().requires_grad_(needs[0]), w.detach().double().requires_grad_(needs[1])
        xn, wn = x.detach().double().requires_grad_(needs[0]), w.detach().double().requires_grad_(needs[1])
        leaf = (lambda a, b: a if needs[0] else b)
        (gs,) = torch.autograd.grad(tbf.prelu(xs, ws).sum(), leaf(xs, ws))
        (gn,) = torch.autograd.grad(F.prelu(xn, wn).sum(), leaf(xn, wn))
        torch.testing.assert_close(gs, gn, rtol=1e-12, atol=0)


def test_prelu_autocast_cpu_bf16():
    x, w = torch.randn(4, 3, 5, requires_grad=True), torch.rand(3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys, yn = tbf.prelu(x, w), F.prelu(x, w)
    assert ys.dtype == yn.dtype == torch.bfloat16 and torch.equal(ys, yn)
    gs = torch.autograd.grad(ys.float().sum(), (x, w))
    gn = torch.autograd.grad(yn.float().sum(), (x, w))
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_prelu_bad_input_names_op():
    with pytest.raises(RuntimeError, match=r"prelu: weight has 3 elements but input has 1 channels"):
        tbf.prelu(torch.randn(3), torch.rand(3))  # a 1-D input has one channel, as in torch
    with pytest.raises(RuntimeError):
        F.prelu(torch.randn(3), torch.rand(3))
    with pytest.raises(RuntimeError, match=r"prelu: weight has 4 elements but input has 3 channels"):
        tbf.prelu(torch.randn(2, 3), torch.rand(4))
    with pytest.raises(RuntimeError, match=r"prelu: weight must be 0-d or 1-D"):
        tbf.prelu(torch.randn(2, 3), torch.rand(3, 1))
    with pytest.raises(RuntimeError, match=r"prelu: a 0-d input takes a weight of one element"):
        tbf.prelu(torch.tensor(1.0), torch.rand(2))
    with pytest.raises(RuntimeError, match=r"prelu: weight has dtype torch.float64"):
        tbf.prelu(torch.randn(2, 3), torch.rand(3, dtype=torch.float64))


GLU_CASES = [((6,), -1), ((4, 6), -1), ((4, 6), 0), ((2, 4, 3), 1), ((2, 3, 4, 2), -2)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim", GLU_CASES)
def test_glu_float64(shape, dim, device):
    assert_matches_native(tbf.glu, F.glu, (torch.randn(shape, requires_grad=True) * 3,), {"dim": dim}, device=device)


@pytest.mark.parametrize("shape,dim", GLU_CASES)
def test_glu_gradcheck(shape, dim):
    gradchecks(tbf.glu, (torch.randn(shape, requires_grad=True),), {"dim": dim})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_glu_low_precision(dtype, device):
    assert_matches_native(tbf.glu, F.glu, (torch.randn(16, 34, requires_grad=True),), dtype=dtype, device=device)


def test_glu_noncontiguous():
    x = torch.randn(6, 4, dtype=torch.float64).t().requires_grad_()  # halved along a strided dim
    assert_matches_native(tbf.glu, F.glu, (x,), {"dim": 1})


def test_bad_arguments_name_op():
    with pytest.raises(RuntimeError, match=r"glu: input's size along dim 1 must be even"):
        tbf.glu(torch.randn(2, 5), 1)
    with pytest.raises(RuntimeError, match=r"glu: input must have at least 1 dim"):
        tbf.glu(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match=r"glu: dim 3 is out of range"):
        tbf.glu(torch.randn(2, 4), 3)
    with pytest.raises(RuntimeError, match=r"softshrink: lambd must be >= 0"):
        tbf.softshrink(torch.randn(3), -1.0)
    with pytest.raises(RuntimeError, match=r"celu: alpha cannot be 0"):
        tbf.celu(torch.randn(3), 0.0)
    with pytest.raises(RuntimeError, match=r"softmin: dim 2 is out of range"):
        tbf.softmin(torch.randn(2, 3), 2)
    with pytest.raises(RuntimeError, match=r"hardswish: input must be floating point"):
        tbf.hardswish(torch.arange(3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("bound", [0.7, 0.3, 1.1, 3.0])
@pytest.mark.parametrize("name", ["threshold", "hardshrink", "softshrink"])
def test_bound_in_low_precision_takes_natives_branch(name, bound, dtype, device):
    """A bound that the dtype cannot hold: [z > th] / [|z| > λ] is decided as native decides it
    (threshold in float32, the shrinks with λ rounded to z's dtype), so δ equals native's bitwise."""
    kw = {"threshold": bound, "value": -5.0} if name == "threshold" else {"lambd": bound}
    z = torch.linspace(-1.3 * bound, 1.3 * bound, 4001).to(dtype)
    z = torch.cat([z, torch.tensor([bound, -bound]).to(dtype)]).to(device)
    g = torch.randn_like(z)
    zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
    ys, yn = getattr(tbf, name)(zs, **kw), getattr(F, name)(zn, **kw)
    assert torch.equal(ys, yn)
    (gs,) = torch.autograd.grad(ys, zs, g)
    (gn,) = torch.autograd.grad(yn, zn, g)
    assert torch.equal(gs, gn)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_hard_kinks_in_low_precision(name, dtype, device):
    z = torch.cat([torch.linspace(-3.5, 3.5, 3001), torch.tensor([-3.0, 3.0, 0.0])]).to(device, dtype)
    zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
    g = torch.ones_like(z)
    (gs,) = torch.autograd.grad(getattr(tbf, name)(zs), zs, g)
    (gn,) = torch.autograd.grad(getattr(F, name)(zn), zn, g)
    outside = z.float().abs() >= 3
    assert torch.equal(gs[outside], gn[outside])  # 0 below −3, 1 (hardswish) or 0 above 3, as native
    torch.testing.assert_close(gs, gn, rtol=2e-2 if dtype == torch.bfloat16 else 2e-3, atol=1e-2)


def test_celu_inplace_is_the_formula_for_any_alpha():
    """Native's in-place celu refuses α < 0 (its elu_ backward needs a positive slope); the δ in place
    equals native out of place for every α."""
    for alpha in (0.5, 2.0, -1.5):
        z = _input().detach().double()
        zs, zn = z.clone().requires_grad_(), z.clone().requires_grad_()
        out = tbf.celu(zs * 1, alpha, inplace=True)
        (gs,) = torch.autograd.grad(out, zs, torch.ones_like(out))
        (gn,) = torch.autograd.grad(F.celu(zn, alpha), zn, torch.ones_like(out))
        # (from the output, f' = a/α + 1 cancels where a is near −α: a few ulps there)
        torch.testing.assert_close(gs, gn, rtol=1e-10, atol=1e-15)


NEW_MODULES = [torch.nn.Hardswish(), torch.nn.Hardswish(inplace=True), torch.nn.Hardsigmoid(),
               torch.nn.Mish(), torch.nn.SELU(), torch.nn.CELU(0.7), torch.nn.LogSigmoid(), torch.nn.Softsign(),
               torch.nn.Tanhshrink(), torch.nn.Threshold(0.1, -1.0), torch.nn.Hardshrink(0.3),
               torch.nn.Softshrink(0.3), torch.nn.GLU(1), torch.nn.PReLU(), torch.nn.PReLU(4), torch.nn.Softmin(1), torch.nn.Softmax2d()]


@pytest.mark.parametrize("module", NEW_MODULES, ids=[repr(m) for m in NEW_MODULES])
def test_new_twins_swapped(module):
    import copy
    native = copy.deepcopy(module).double()
    model = torchbp.swap(copy.deepcopy(module).double())
    assert type(model) is torchbp.registry.twin_for(type(module)) and isinstance(model, type(module))
    assert repr(model).replace("[δ]", "") == repr(native)
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 3)
    xs, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yn = model(xs * 1), native(xn * 1)
    assert torch.equal(ys, yn)
    assert "Copy" in type(ys.grad_fn).__name__ or type(ys.grad_fn)._forward_cls.__module__.startswith("torchbp")
    v = torch.randn_like(yn)
    gs = torch.autograd.grad(ys, [xs, *model.parameters()], v)
    gn = torch.autograd.grad(yn, [xn, *native.parameters()], v)
    for a, b in zip(gs, gn):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_new_routes_under_manual_backward():
    from torchbp.functional import activation as A
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_()
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    calls = [
        (lambda: F.hardswish(x), A.Hardswish), (lambda: F.hardsigmoid(x), A.Hardsigmoid),
        (lambda: F.mish(x), A.Mish), (lambda: F.selu(x), A.SELU), (lambda: torch.selu(x), A.SELU),
        (lambda: torch.selu_(x * 1), A._Inplace), (lambda: F.celu(x, 0.5), A.CELU),
        (lambda: torch.celu(x, 0.5), A.CELU), (lambda: torch.celu_(x * 1, alpha=0.5), A._Inplace),
        (lambda: F.logsigmoid(x), A.LogSigmoid), (lambda: F.softsign(x), A.Softsign),
        (lambda: F.tanhshrink(x), A.Tanhshrink), (lambda: F.threshold(x, 0.5, 2.0), A.Threshold),
        (lambda: torch.threshold(x, 0.5, 2.0), A.Threshold), (lambda: F.hardshrink(x, 0.3), A.Hardshrink),
        (lambda: x.hardshrink(0.3), A.Hardshrink), (lambda: F.softshrink(x), A.Softshrink),
        (lambda: F.glu(x), A.GLU), (lambda: F.prelu(x, w), A.PReLU), (lambda: x.prelu(w), A.PReLU),
        (lambda: F.softmin(x, 1), A.Softmin),
    ]
    for f, fn in calls:
        native = f()
        with torchbp.manual_backward():
            ours = f()
        assert type(ours.grad_fn)._forward_cls is fn, (f, type(ours.grad_fn))
        torch.testing.assert_close(ours, native, rtol=0, atol=0)
    h = x * 1
    with torchbp.manual_backward():
        out = torch.threshold_(h, 0.5, 2.0)
    assert out is h and "Copy" in type(out.grad_fn).__name__  # f' from the copy of z kept before


def test_audit_full_coverage_with_prelu_and_hardswish():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.PReLU(4), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.Hardswish(inplace=True), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5),
                                torch.nn.PReLU(), torch.nn.Linear(5, 3), torch.nn.Hardsigmoid()).double()
    r = torchbp.audit(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0, str(r)


def test_prelu_and_glu_under_jacrev_and_vmap():
    z, w = torch.randn(3, 4, 6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    for argnums in (0, 1):
        torch.testing.assert_close(torch.func.jacrev(tbf.prelu, argnums=argnums)(z[0], w),
                                   torch.func.jacrev(F.prelu, argnums=argnums)(z[0], w), rtol=1e-12, atol=0)
    per_example = [torch.func.vmap(torch.func.grad(lambda x, v: f(x, v).square().sum(), argnums=1),
                                   in_dims=(0, None))(z, w) for f in (tbf.prelu, F.prelu)]
    torch.testing.assert_close(*per_example, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.func.jacrev(lambda t: tbf.glu(t, 1))(z[:, :, :4]),
                               torch.func.jacrev(lambda t: F.glu(t, 1))(z[:, :, :4]), rtol=1e-12, atol=0)


# --- bilinear: z_o = a1ᵀ W_o a2 + b_o -----------------------------------------------------------------

BILINEAR_SHAPES = [(), (4,), (2, 3), (2, 1, 3), (0,)]  # leading dims of both inputs


def _bilinear_args(lead, bias=True, grads="xwb"):
    return (torch.randn(*lead, 5, requires_grad="x" in grads), torch.randn(*lead, 3, requires_grad="x" in grads),
            torch.randn(6, 5, 3, requires_grad="w" in grads),
            torch.randn(6, requires_grad="b" in grads) if bias else None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lead", BILINEAR_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_float64(lead, bias, device):
    assert_matches_native(tbf.bilinear, F.bilinear, _bilinear_args(lead, bias), device=device)


@pytest.mark.parametrize("grads", ["x", "w", "b", "wb"])
def test_bilinear_any_subset_of_grads_and_noncontiguous(grads):
    x1, x2, W, b = _bilinear_args((4,), grads=grads)
    x1 = torch.randn(5, 4, dtype=torch.float64).t().requires_grad_("x" in grads)  # non-contiguous
    W = torch.randn(6, 3, 5, dtype=torch.float64).transpose(1, 2).requires_grad_("w" in grads)
    assert_matches_native(tbf.bilinear, F.bilinear, (x1, x2, W, b))
    only_x2 = (x1.detach(), x2.detach().requires_grad_(), W.detach(), None)
    assert_matches_native(tbf.bilinear, F.bilinear, only_x2)


def test_bilinear_gradcheck():
    gradchecks(tbf.bilinear, _bilinear_args((2, 3)))
    gradchecks(tbf.bilinear, _bilinear_args((4,), bias=False))
    gradchecks(tbf.bilinear, _bilinear_args(()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_bilinear_low_precision(dtype, device):
    args = (torch.randn(16, 24, requires_grad=True), torch.randn(16, 20, requires_grad=True),
            torch.randn(12, 24, 20, requires_grad=True) / 5, torch.randn(12, requires_grad=True))
    assert_matches_native(tbf.bilinear, F.bilinear, args, dtype=dtype, device=device)


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
    from torchbp.functional.linear import Bilinear
    x1, x2, W, b = (t.double().detach().requires_grad_() for t in _bilinear_args((3,)))
    module = torch.nn.Bilinear(5, 3, 6).double()
    calls = [(lambda: F.bilinear(x1, x2, W, b), [x1, x2, W, b]), (lambda: torch.bilinear(x1, x2, W, None), [W]),
             (lambda: module(x1, x2), [x1, *module.parameters()])]
    for f, leaves in calls:
        yn = f()
        with torchbp.manual_backward():
            ys = f()
        assert type(ys.grad_fn)._forward_cls is Bilinear and torch.equal(ys, yn)
        v = torch.randn_like(yn)
        for a, c in zip(torch.autograd.grad(ys, leaves, v), torch.autograd.grad(yn, leaves, v)):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


def test_bilinear_bad_input_names_op():
    x1, x2, W = torch.randn(4, 5), torch.randn(4, 3), torch.randn(6, 5, 3)
    cases = [((x1, torch.randn(2, 3), W), r"input1 and input2 must have the same leading dims"),
             ((x1, x2[0], W), r"input1 and input2 must have the same leading dims"),
             ((x1, x2, W[:, :4]), r"input1 has 5 features in its last dim but weight expects 4"),
             ((x1, x2, W[:, :, :2]), r"input2 has 3 features in its last dim but weight expects 2"),
             ((x1, x2, W[0]), r"weight must be 3-D"),
             ((x1, x2, W, torch.randn(5)), r"bias must have shape \[6\]"),
             ((x1, x2.double(), W), r"input2 has dtype torch.float64"),
             ((x1, x2, W.double()), r"weight has dtype torch.float64")]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match="torchbp.functional.bilinear: " + msg):
            tbf.bilinear(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast does not promote: one dtype, as native
        with pytest.raises(RuntimeError, match="bilinear: all tensors must have one dtype"):
            tbf.bilinear(x1, x2.bfloat16(), W)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # no batching rule for aten::bilinear
def test_bilinear_under_jacrev_and_vmap():
    x1, x2, W, b = (t.double().detach() for t in _bilinear_args((4,)))
    for argnums in (0, 1, 2, 3):
        torch.testing.assert_close(torch.func.jacrev(tbf.bilinear, argnums=argnums)(x1[0], x2[0], W, b),
                                   torch.func.jacrev(F.bilinear, argnums=argnums)(x1[0], x2[0], W, b),
                                   rtol=1e-12, atol=0)
    per_example = [torch.func.vmap(torch.func.grad(lambda p, q, w: f(p, q, w, b).square().sum(), argnums=2),
                                   in_dims=(0, 0, None))(x1, x2, W) for f in (tbf.bilinear, F.bilinear)]
    torch.testing.assert_close(*per_example, rtol=1e-12, atol=0)
