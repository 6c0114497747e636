"""δ activations (torchbp.functional.activation) beyond the common matrix (tests/cases/activation.py drives
float64, gradcheck, low precision, autocast, vmap, routing, the twins and the refused inputs): in place, kinks
and bounds, special values, batched δ into unbatched inputs (jacrev), PReLU's partial gradients, in-place
twins and routes, audit."""
import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases.activation import ACTIVATIONS, prelu_args as _prelu_args, with_kinks as _input
from util import DEVICES, LOW, assert_matches_native


IDS = [f"{o.__name__}{k or ''}" for o, _, k in ACTIVATIONS]


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


def test_prelu_weight_only_and_input_only():
    x, w = _prelu_args((2, 3, 4), 3)
    for needs in [(True, False), (False, True)]:
        xs, ws = x.detach().double().requires_grad_(needs[0]), w.detach().double().requires_grad_(needs[1])
        xn, wn = x.detach().double().requires_grad_(needs[0]), w.detach().double().requires_grad_(needs[1])
        leaf = (lambda a, b: a if needs[0] else b)
        (gs,) = torch.autograd.grad(tbf.prelu(xs, ws).sum(), leaf(xs, ws))
        (gn,) = torch.autograd.grad(F.prelu(xn, wn).sum(), leaf(xn, wn))
        torch.testing.assert_close(gs, gn, rtol=1e-12, atol=0)


def test_glu_noncontiguous():
    x = torch.randn(6, 4, dtype=torch.float64).t().requires_grad_()  # halved along a strided dim
    assert_matches_native(tbf.glu, F.glu, (x,), {"dim": 1})


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
    """The twin is its registered class, prints as native, and computes native's forward bit for bit (the
    out-of-place twins' gradients: the matrix's module cases in tests/cases/activation.py)."""
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
    if getattr(module, "inplace", False):  # in place on the caller's tensor: no module case can say this
        v = torch.randn_like(yn)
        gs = torch.autograd.grad(ys, [xs, *model.parameters()], v)
        gn = torch.autograd.grad(yn, [xn, *native.parameters()], v)
        for a, b in zip(gs, gn):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_new_routes_under_manual_backward():
    """The in-place names route to the in-place δ (the out-of-place names, torch's aliases among them:
    the matrix's ROUTE check)."""
    from torchbp.functional import activation as A
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_()
    calls = [(lambda: torch.selu_(x * 1), A._Inplace), (lambda: torch.celu_(x * 1, alpha=0.5), A._Inplace)]
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


def test_prelu_and_glu_under_jacrev():
    # batched δ into unbatched inputs (per-example gradients under vmap: the matrix's VMAP check)
    z, w = torch.randn(3, 4, 6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    for argnums in (0, 1):
        torch.testing.assert_close(torch.func.jacrev(tbf.prelu, argnums=argnums)(z[0], w),
                                   torch.func.jacrev(F.prelu, argnums=argnums)(z[0], w), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.func.jacrev(lambda t: tbf.glu(t, 1))(z[:, :, :4]),
                               torch.func.jacrev(lambda t: F.glu(t, 1))(z[:, :, :4]), rtol=1e-12, atol=0)
