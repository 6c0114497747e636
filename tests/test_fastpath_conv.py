"""fastpath.conv against the plain formulas of torchbp.functional.conv: ∂J/∂W = x ⋆ k (``conv._grad_W``, one
convolution) in each form ``weight_grad`` can take (unfold + GEMM, a pointwise convolution's per-sample
products, channels-last kernel, float32 chunks of a half-precision convolution, plain chunks), ∂J/∂b = Σ δ
(``conv._grad_b``), δ_a = Wᵀ ⋆ δ (``conv._grad_a``) in a pointwise convolution's product forms, in float64 (to rounding) and in
float32, bfloat16 and float16 (the low-precision rule against a float64 oracle, with native autograd's ∂J/∂W as
the yardstick: the plain formula in half precision is itself wrong on some CPUs, see fastpath.conv);
conv1d/2d/3d and transposed, groups, stride, padding,
dilation, an empty batch; on both sides of every threshold (batch chunks, the form chosen by shape and by
the CPU's vector width)."""

import pytest
import torch

from torchbp.functional import conv
from torchbp.functional.fastpath import conv as fc

from util import DEVICES, FLOOR, rel_err

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
FORMS = ["gemm", "pointwise", "channels_last", "plain", None]

# (id, n, N, C_in, C_out, L, K, stride, padding, dilation, groups, transposed, output_padding)
CASES = [
    ("1d", 1, 3, 4, 6, 9, 3, 1, 1, 1, 1, False, 0),
    ("1d-strided-dilated", 1, 2, 4, 4, 11, 3, 2, 2, 2, 2, False, 0),
    ("2d", 2, 3, 4, 6, 7, 3, 1, 1, 1, 1, False, 0),
    ("2d-strided-rect", 2, 4, 3, 5, (9, 8), (3, 2), (2, 1), (1, 0), 1, 1, False, 0),
    ("2d-dilated", 2, 2, 4, 4, 9, 3, 1, 2, 2, 1, False, 0),
    ("2d-groups", 2, 3, 6, 9, 7, 3, 2, 1, 1, 3, False, 0),
    ("2d-depthwise", 2, 3, 5, 5, 8, 3, 1, 1, 1, 5, False, 0),
    ("2d-depthwise-x2", 2, 2, 4, 8, 6, 5, 2, 2, 1, 4, False, 0),
    ("2d-pointwise", 2, 3, 6, 4, 5, 1, 1, 0, 1, 1, False, 0),
    ("2d-pointwise-strided", 2, 3, 6, 4, 7, 1, 2, 0, 1, 1, False, 0),
    ("2d-wide", 2, 2, 20, 24, 6, 3, 1, 1, 1, 1, False, 0),
    # oneDNN's bfloat16 forward convolution returns a wrong ∂J/∂W for this one's plain formula on AMX CPUs
    ("2d-kernel-as-large-as-the-map", 2, 8, 16, 64, 8, 3, 1, 1, 1, 1, False, 0),
    ("3d", 3, 2, 3, 4, 5, 3, 1, 1, 1, 1, False, 0),
    ("3d-strided-groups", 3, 2, 4, 4, 6, 2, 2, 0, 1, 2, False, 0),
    ("1d-transposed", 1, 3, 4, 6, 5, 3, 2, 1, 1, 2, True, 1),
    ("2d-transposed", 2, 2, 4, 3, 4, 3, 2, 1, 1, 1, True, 1),
    ("2d-transposed-outpad-past-stride", 2, 2, 3, 4, 4, 3, 1, 0, 3, 1, True, 2),
    ("3d-transposed", 3, 2, 2, 3, 3, 2, 2, 0, 1, 1, True, 1),
    ("2d-pointwise-one-position", 2, 3, 6, 4, 1, 1, 1, 0, 1, 1, False, 0),
    ("1d-pointwise-few-positions", 1, 3, 5, 7, 3, 1, 1, 0, 1, 1, False, 0),
    ("3d-pointwise", 3, 2, 3, 4, 3, 1, 1, 0, 1, 1, False, 0),
    ("2d-pointwise-transposed", 2, 3, 6, 4, 5, 1, 1, 0, 1, 1, True, 0),
]
IDS = [c[0] for c in CASES]


def _tuple(v, n):
    return tuple(v) if isinstance(v, tuple) else (v,) * n


def operands(case, dtype=torch.float64, device="cpu", N=None, seed=0):
    """(x, k, s, p, d, g, K) of ∂J/∂W = x ⋆ k for a case: x = a, k = δ for a convolution; x = δ, k = a for a
    transposed one (whose W is (C_in, C_out/g, *K))."""
    _, n, N0, C, O, L, K, s, p, d, g, transposed, op = case
    N = N0 if N is None else N
    L, K, s, p, d = (_tuple(v, n) for v in (L, K, s, p, d))
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(N, C, *L, generator=gen, dtype=torch.float64)
    if transposed:
        W = torch.randn(C, O // g, *K, generator=gen, dtype=torch.float64)
        z = conv._CONV_T[n](a, W, None, s, p, _tuple(op, n), g, d)
    else:
        W = torch.randn(O, C // g, *K, generator=gen, dtype=torch.float64)
        z = conv._CONV[n](a, W, None, s, p, d, g)
    delta = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    x, k = (delta, a) if transposed else (a, delta)
    return x.to(device, dtype), k.to(device, dtype), s, p, d, g, K


def plain(x, k, s, p, d, g, K):
    return conv._grad_W(x, k, s, p, d, g, K)


def fast(x, k, s, p, d, g, K, form=None, chunk_elems=None, graph=False):
    """The fast path as a first-order backward runs it (no graph: its sums in place), or recording a graph."""
    with torch.set_grad_enabled(graph):
        return fc.weight_grad(x, k, s, p, d, g, K, conv._grad_W, chunk_elems, form)


def _applies(form, case, dtype):
    if form == "pointwise":  # a pointwise convolution's form, float32 / float64 only
        _, n, *_, K, s, p, d, g, _, _ = case
        return fc.pointwise(_tuple(K, n), _tuple(s, n), _tuple(p, n), g) and dtype in (torch.float32, torch.float64)
    return form != "channels_last" or case[1] == 2


def native(case, x, k, s, p, d, g, K):
    """Native autograd's ∂J/∂W for a case's operands, in their dtype: the yardstick of the low-precision rule."""
    n, transposed, op = case[1], case[11], _tuple(case[12], case[1])
    W = torch.zeros(k.shape[1], x.shape[1] // g, *K, dtype=x.dtype, device=x.device, requires_grad=True)
    if transposed:  # x = δ, k = a
        z = conv._CONV_T[n](k, W, None, s, p, op, g, d)
        return torch.autograd.grad(z, W, x)[0]
    return torch.autograd.grad(conv._CONV[n](x, W, None, s, p, d, g), W, k)[0]


@pytest.mark.parametrize("graph", [False, True], ids=["in-place", "graph"])
@pytest.mark.parametrize("chunk_elems", [None, 1], ids=["one-chunk", "per-sample"])
@pytest.mark.parametrize("form", FORMS, ids=[str(f) for f in FORMS])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weight_grad_is_the_plain_formula_in_float64(case, form, chunk_elems, graph):
    if not _applies(form, case, torch.float64):
        pytest.skip("a 2-D form, or a pointwise convolution's")
    x, k, *args = operands(case)
    got, want = fast(x, k, *args, form=form, chunk_elems=chunk_elems, graph=graph), plain(x, k, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous()  # W's own layout: autograd accumulates it without a copy
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("chunk_elems", [None, 1], ids=["one-chunk", "per-sample"])
@pytest.mark.parametrize("form", FORMS, ids=[str(f) for f in FORMS])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("1d", "2d-groups", "2d-depthwise-x2", "2d-wide",
                                                               "3d", "2d-transposed", "2d-pointwise",
                                                               "2d-kernel-as-large-as-the-map")],
                         ids=lambda c: c[0])
def test_weight_grad_in_low_precision(case, form, chunk_elems, dtype):
    """err(fast path in dtype, float64 oracle) ≤ 2·err(native in dtype, oracle) + floor(dtype) (the plain
    formula's own error is no yardstick: oneDNN's half-precision convolution is wrong for some shapes on AMX
    CPUs, which the forms never run)."""
    if not _applies(form, case, dtype):
        pytest.skip("a 2-D form, or a pointwise convolution's in float32")
    x, k, *args = operands(case, N=8)
    oracle = plain(x, k, *args)
    xl, kl = x.to(dtype), k.to(dtype)
    got = fast(xl, kl, *args, form=form, chunk_elems=chunk_elems)
    assert got.dtype == dtype and got.shape == oracle.shape and got.is_contiguous()
    assert rel_err(got, oracle) <= 2 * rel_err(native(case, xl, kl, *args), oracle) + FLOOR[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weight_grad_as_chosen(case, dtype, device):
    """The form the backward takes on this device (CPU: by dtype, shape and vector width)."""
    x, k, *args = operands(case, N=5)
    oracle = plain(x, k, *args)
    xl, kl = x.to(device, dtype), k.to(device, dtype)
    got = fast(xl, kl, *args)
    assert got.dtype == dtype and got.shape == oracle.shape and got.device == xl.device
    bound = 1e-12 if dtype == torch.float64 else 2 * rel_err(native(case, xl, kl, *args), oracle) + FLOOR[dtype]
    assert rel_err(got, oracle) <= bound


@pytest.mark.parametrize("form", FORMS, ids=[str(f) for f in FORMS])
@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[14]], ids=lambda c: c[0])
def test_weight_grad_of_an_empty_batch_is_zero(case, form):
    if not _applies(form, case, torch.float32):
        pytest.skip("a 2-D form, or a pointwise convolution's")
    x, k, *args = operands(case, dtype=torch.float32, N=0)
    want = plain(*operands(case, dtype=torch.float32, N=1)[:2], *args)
    got = fast(x, k, *args, form=form)
    assert got.shape == want.shape and not got.any()


SMALL = [CASES[1], ("2d-groups-small", 2, 2, 4, 4, 4, 2, 2, 1, 1, 2, False, 0),
         ("2d-depthwise-small", 2, 2, 2, 2, 4, 3, 1, 1, 1, 2, False, 0),
         ("2d-transposed-small", 2, 2, 2, 2, 3, 2, 2, 0, 1, 1, True, 1)]


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c[0])
def test_weight_grad_gemm_is_differentiable(case):
    """The GEMM form in differentiable ops: gradcheck / gradgradcheck through it (double backward of conv)."""
    x, k, *args = operands(case, N=2)
    fn = lambda x, k: fc.weight_grad(x, k, *args, conv._grad_W, 1, "gemm")  # noqa: E731  two batch chunks
    x.requires_grad_(), k.requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, k))
    assert torch.autograd.gradgradcheck(fn, (x, k))


def test_weight_grad_gemm_reaches_the_backward():
    """A float32 conv2d's ∂J/∂W on the CPU goes through weight_grad_gemm where gemm_form says so (a bug
    planted there shows in the gradient), and through the plain formula where it does not."""
    a = torch.randn(4, 3, 8, 8, requires_grad=True)
    W = torch.randn(6, 3, 3, 3, requires_grad=True)
    import torchbp.functional as tbf
    tbf.conv2d(a, W, padding=1).sum().backward()
    right = W.grad.clone()
    W.grad = None
    original = fc.weight_grad_gemm
    try:
        fc.weight_grad_gemm = lambda *args: 2 * original(*args)
        tbf.conv2d(a, W, padding=1).sum().backward()
    finally:
        fc.weight_grad_gemm = original
    assert torch.allclose(W.grad, 2 * right)


def _shape(N, C, Y, K=(3, 3), g=1, s=(1, 1)):
    x = torch.empty(N, C, *(y + 2 for y in Y))
    k = torch.empty(N, C, *Y)
    return x, k, g, K, s


@pytest.mark.parametrize("vector", [8, 16])
def test_gemm_form_thresholds(vector, monkeypatch):
    """Both sides of each threshold of the choice: pointwise, depthwise positions, positions, channels per
    group against the CPU's vector width."""
    monkeypatch.setattr(fc, "cpu_vector_floats", lambda: vector)
    P, D = fc.GEMM_MAX_POSITIONS, fc.DEPTHWISE_MIN_POSITIONS
    assert fc.gemm_form(*_shape(2, 64, (32, 32), K=(1, 1)))  # pointwise: always
    assert fc.gemm_form(*_shape(2, 8, (1, D + 1), g=8))  # depthwise over enough positions
    assert not fc.gemm_form(*_shape(2, 8, (1, D), g=8))
    assert fc.gemm_form(*_shape(2, 64, (1, P)))  # few positions
    assert not fc.gemm_form(*_shape(2, 64, (1, P + 1)))
    assert fc.gemm_form(*_shape(2, vector - 1, (1, P + 1)))  # few channels per group, by the vector width,
    assert not fc.gemm_form(*_shape(2, vector - 1, (1, P + 1), s=(1, 2)))  # with stride 1
    assert fc.gemm_form(*_shape(2, vector - 1, (1, P), s=(2, 2)))
    assert not fc.gemm_form(*_shape(2, vector, (1, P + 1)))
    assert not fc.gemm_form(*_shape(2, 2 * vector, (1, P + 1), g=2))
    assert fc.gemm_form(*_shape(2, 2 * vector - 2, (1, P + 1), g=2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positions", ["few", "many"])
def test_weight_grad_picks_its_form(dtype, positions, monkeypatch):
    """Which form runs: GEMM for float64 always and float32 where gemm_form says so, the channels-last kernel
    for other wide float32 2-D convolutions; GEMM in half precision; each still the plain value."""
    ran = []
    for name in ("weight_grad_gemm", "_channels_last_kernel", "_in_float32"):
        original = getattr(fc, name)
        monkeypatch.setattr(fc, name, lambda *a, _o=original, _n=name: ran.append(_n) or _o(*a))
    Y = 4 if positions == "few" else 12
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, Y + 2, Y + 2, generator=gen, dtype=torch.float64)
    k = torch.randn(3, 8, Y, Y, generator=gen, dtype=torch.float64)
    args = (1, 1), (0, 0), (1, 1), 1, (3, 3)
    want = plain(x, k, *args)
    got = fast(x.to(dtype), k.to(dtype), *args)
    wide = {"weight_grad_gemm"} if positions == "few" else {"_channels_last_kernel"}
    half = {"weight_grad_gemm"}
    expected = {torch.float64: {"weight_grad_gemm"}, torch.bfloat16: half, torch.float16: half,
                torch.float32: wide}[dtype]
    assert ran and set(ran) == expected
    assert rel_err(got, want) < (1e-12 if dtype == torch.float64 else 4 * FLOOR[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_stem_runs_the_convolution_on_float32_copies(dtype, monkeypatch):
    """Half precision: a strided convolution with few channels per group (a stem) takes the convolution on
    float32 copies, never oneDNN's half-precision one; the other shapes the GEMM (half_gemm_form)."""
    ran, original = [], conv._grad_W
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 17, 17, generator=gen, dtype=torch.float64)
    k = torch.randn(4, 8, 8, 8, generator=gen, dtype=torch.float64)
    args = (2, 2), (1, 1), (1, 1), 1, (3, 3)
    want = plain(x, k, *args)
    monkeypatch.setattr(conv, "_grad_W", lambda x, *a: ran.append(x.dtype) or original(x, *a))
    assert not fc.half_gemm_form(x, 1, (2, 2)) and fc.half_gemm_form(x, 1, (1, 1))
    assert fc.half_gemm_form(torch.empty(1, 8 * fc.cpu_vector_floats(), 1, 1), 8, (2, 2))
    got = fast(x.to(dtype), k.to(dtype), *args)
    assert ran and set(ran) == {torch.float32} and got.dtype == dtype
    assert rel_err(got, want) < 4 * FLOOR[dtype]


def test_channels_last_chunks_by_the_vector_width(monkeypatch):
    """The channels-last form takes one vector of samples per batch chunk."""
    calls = []
    for vector in (8, 16):
        monkeypatch.setattr(fc, "cpu_vector_floats", lambda v=vector: v)
        x, k, *args = operands(CASES[10], dtype=torch.float32, N=33)
        fc.weight_grad(x, k, *args, lambda x, k, *a: calls.append(x.shape[0]) or conv._grad_W(x, k, *a),
                       None, "channels_last")
        assert max(calls) <= vector and len(calls) == -(-33 // vector) and sum(calls) == 33
        calls.clear()


@pytest.mark.parametrize("n, elems, limit, want", [(8, 10, None, 1), (8, fc.CHUNK_ELEMS + 1, None, 2),
                                                    (8, 100, 1, 8), (0, 0, None, 1), (3, 10, 4, 3)])
def test_n_chunks(n, elems, limit, want):
    assert fc.n_chunks(n, elems, limit) == want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_elems", [None, 1], ids=["one-chunk", "per-sample"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_bias_grad_is_the_plain_sum(n, chunk_elems, dtype, device):
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(5, 4, *(3,) * n, generator=gen, dtype=torch.float64)
    oracle = conv._grad_b(delta)
    dl = delta.to(device, dtype)
    with torch.no_grad():
        got = fc.bias_grad(dl, conv._grad_b, chunk_elems)
    assert got.dtype == dtype and got.shape == (4,)
    bound = 1e-12 if dtype == torch.float64 else 2 * rel_err(conv._grad_b(dl), oracle) + FLOOR[dtype]
    assert rel_err(got, oracle) <= bound


def test_plain_formulas_match_native():
    """The plain formulas themselves, against native autograd (the fast paths are held to them)."""
    for case in CASES:
        _, n, N, C, O, L, K, s, p, d, g, transposed, op = case
        if transposed:
            continue
        L, K, s, p, d = (_tuple(v, n) for v in (L, K, s, p, d))
        a = torch.randn(N, C, *L, dtype=torch.float64, requires_grad=True)
        W = torch.randn(O, C // g, *K, dtype=torch.float64, requires_grad=True)
        b = torch.randn(O, dtype=torch.float64, requires_grad=True)
        z = conv._CONV[n](a, W, b, s, p, d, g)
        delta = torch.randn_like(z)
        ga, gW, gb = torch.autograd.grad(z, (a, W, b), delta)
        assert rel_err(conv._grad_a(delta, W.detach(), s, p, d, g, L), ga) < 1e-12, case[0]
        assert rel_err(conv._grad_W(a.detach(), delta, s, p, d, g, K), gW) < 1e-12, case[0]
        assert rel_err(conv._grad_b(delta), gb) < 1e-12, case[0]


# --- δ_a of a pointwise convolution: Wᵀ δ at every position, as matrix products --------------------------

def _pointwise(N, C, O, Y, dtype=torch.float64, seed=0):
    """(δ, W, a's spatial extent) of a pointwise convolution with spatial extent ``Y``."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(N, O, *Y, generator=gen, dtype=torch.float64)
    W = torch.randn(O, C, *[1] * len(Y), generator=gen, dtype=torch.float64)
    return delta.to(dtype), W.to(dtype), tuple(Y)


def _grad_a_plain(delta, W, L):
    n = len(L)
    return conv._grad_a(delta, W, (1,) * n, (0,) * n, (1,) * n, 1, L)


T = fc.POINTWISE_BATCHED_MIN_POSITIONS
# one position per sample, a few (both sides of 1 and of the threshold), many; conv1d and conv3d
POINTWISE_Y = [(1, 1), (1, 2), (1, T - 1), (1, T), (T + 1,), (2, 3, 3), (6, 6)]


@pytest.mark.parametrize("graph", [False, True], ids=["in-place", "graph"])
@pytest.mark.parametrize("Y", POINTWISE_Y, ids=str)
def test_pointwise_input_grad_is_the_plain_formula_in_float64(Y, graph):
    delta, W, L = _pointwise(3, 5, 7, Y)
    with torch.set_grad_enabled(graph):
        got = fc.input_grad_pointwise(delta, W)
    want = _grad_a_plain(delta, W, L)
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("Y", POINTWISE_Y, ids=str)
def test_pointwise_input_grad_in_low_precision(Y, dtype):
    """err(fast path in dtype, float64 oracle) ≤ 2·err(native δ_a in dtype, oracle) + floor(dtype)."""
    delta, W, L = _pointwise(8, 24, 32, Y)
    oracle = _grad_a_plain(delta, W, L)
    dl, Wl = delta.to(dtype), W.to(dtype)
    a = torch.zeros(dl.shape[0], W.shape[1], *L, dtype=dtype, requires_grad=True)
    native_ga = torch.autograd.grad(conv._CONV[len(L)](a, Wl), a, dl)[0]
    got = fc.input_grad_pointwise(dl, Wl)
    assert got.dtype == dtype and got.shape == oracle.shape
    assert rel_err(got, oracle) <= 2 * rel_err(native_ga, oracle) + FLOOR[dtype]


@pytest.mark.parametrize("Y", [(1, 1), (1, 3), (1, T)], ids=str)
def test_pointwise_input_grad_is_differentiable(Y):
    """Each branch in differentiable ops: gradcheck and gradgradcheck (double backward of a 1×1 convolution)."""
    delta, W, _ = _pointwise(2, 2, 3, Y)
    delta.requires_grad_(), W.requires_grad_()
    assert torch.autograd.gradcheck(fc.input_grad_pointwise, (delta, W))
    assert torch.autograd.gradgradcheck(fc.input_grad_pointwise, (delta, W))


@pytest.mark.parametrize("Y", [(1, 1), (1, 3), (1, T)], ids=str)
def test_pointwise_input_grad_under_vmap(Y):
    delta, W, L = _pointwise(4, 3, 5, Y)
    got = torch.func.vmap(fc.input_grad_pointwise, in_dims=(0, None))(delta.unsqueeze(1), W)
    assert rel_err(got.squeeze(1), _grad_a_plain(delta, W, L)) < 1e-12


def test_pointwise_applies_to_unit_kernels_with_stride_1_no_padding_one_group():
    assert fc.pointwise((1, 1), (1, 1), (0, 0), 1) and fc.pointwise((1,), (1,), (0,), 1)
    assert not fc.pointwise((1, 3), (1, 1), (0, 0), 1)
    assert not fc.pointwise((1, 1), (2, 1), (0, 0), 1)
    assert not fc.pointwise((1, 1), (1, 1), (0, 1), 1)
    assert not fc.pointwise((1, 1), (1, 1), (0, 0), 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_pointwise_convolution_backward_takes_the_product_on_the_cpu(dtype, device, monkeypatch):
    """conv2d's δ_a goes through input_grad_pointwise for a 1×1 convolution on the CPU (a bug planted there
    shows in the gradient), and the transposed convolution elsewhere (strided, padded, grouped, CUDA)."""
    import torchbp.functional as tbf
    original, ran = fc.input_grad_pointwise, []
    monkeypatch.setattr(fc, "input_grad_pointwise", lambda *a: ran.append(1) or 2 * original(*a))
    for kw, C, pointwise in ((dict(), 4, True), (dict(stride=2), 4, False), (dict(padding=1), 4, False),
                             (dict(groups=2), 4, False)):
        a = torch.randn(3, C, 5, 5, dtype=torch.float64, requires_grad=True)
        W = torch.randn(6, C // kw.get("groups", 1), 1, 1, dtype=torch.float64, requires_grad=True)
        delta = torch.randn_like(torch.nn.functional.conv2d(a, W, **kw))
        want = torch.autograd.grad(torch.nn.functional.conv2d(a, W, **kw), a, delta)[0]
        al, Wl = (t.detach().to(device, dtype).requires_grad_() for t in (a, W))
        got = torch.autograd.grad(tbf.conv2d(al, Wl, **kw), al, delta.to(device, dtype))[0]
        planted = pointwise and device == "cpu"
        assert bool(ran) == planted
        ran.clear()
        tol = 1e-12 if dtype == torch.float64 else 8 * FLOOR[dtype]
        assert rel_err(got.double().cpu(), 2 * want if planted else want) < tol


@pytest.mark.parametrize("Y", [(1, 1), (1, 2), (4, 5)], ids=str)
def test_pointwise_weight_grad_takes_the_per_sample_products_from_two_positions(Y, monkeypatch):
    """float32 / float64 on the CPU: a pointwise convolution's ∂J/∂W through weight_grad_pointwise from two
    positions per sample; with one, the GEMM form (its gathers are views then)."""
    ran = []
    for name in ("weight_grad_pointwise", "weight_grad_gemm"):
        original = getattr(fc, name)
        monkeypatch.setattr(fc, name, lambda *a, _o=original, _n=name: ran.append(_n) or _o(*a))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *Y, generator=gen, dtype=torch.float64)
    k = torch.randn(3, 4, *Y, generator=gen, dtype=torch.float64)
    args = (1, 1), (0, 0), (1, 1), 1, (1, 1)
    for dtype in (torch.float64, torch.float32):
        got = fast(x.to(dtype), k.to(dtype), *args)
        assert ran == ["weight_grad_pointwise" if Y != (1, 1) else "weight_grad_gemm"]
        ran.clear()
        assert rel_err(got, plain(x, k, *args)) < (1e-12 if dtype == torch.float64 else 4 * FLOOR[dtype])
