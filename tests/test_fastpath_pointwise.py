"""fastpath.pointwise.select_scale (δ ⊙ f' with native's select where f' = 0) against its plain formula,
torch.where(f' == 0, 0, δ ⊙ f'), in every floating dtype with NaN, ±inf and ±0 in δ and f'; and each
piecewise activation's δ with the fast path against the same δ with the plain one, and against native,
at its kinks and with inf/NaN/±0 δ."""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from torchbp.functional.fastpath import pointwise as fp
from util import rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0, 1e-30, -2.5]


def assert_same_values(a, b):
    """Equal values, NaN in the same places (the sign of a zero aside: δ ⊙ 0 is −0 for a negative δ)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    assert torch.equal(a[~a.isnan()], b[~b.isnan()]), (a, b)


def _operands(dtype, device, special_g):
    g = torch.Generator().manual_seed(0)
    gs = torch.randn(64, generator=g, dtype=torch.float64)
    df = torch.tensor([0.0, -0.0, 1.0, 0.25, 1 / 6, -1.5, 1e-30], dtype=torch.float64)
    if special_g:
        gs = torch.cat([gs, torch.tensor(SPECIAL, dtype=torch.float64)])
    gg, dd = torch.meshgrid(gs, df, indexing="ij")
    return gg.reshape(-1).to(device, dtype), dd.reshape(-1).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("special_g", [False, True], ids=["finite", "nonfinite"])
def test_select_scale_is_the_plain_select(dtype, device, special_g, monkeypatch):
    g, df = _operands(dtype, device, special_g)
    want = fp.select_scale_plain(g, df)
    if device == "cpu" and not special_g:  # a finite δ on the CPU takes the product, not the select
        monkeypatch.setattr(fp, "select_scale_plain", lambda *a: pytest.fail("the plain select ran"))
    with torch.no_grad():
        got = fp.select_scale(g, df.clone())
    assert_same_values(got, want)
    if special_g:  # an inf or NaN δ where f' = 0 gives 0
        assert (got[df == 0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_select_scale_takes_the_select_when_the_sum_overflows(dtype):
    """Finite δ whose sum overflows the dtype: the select runs (still the plain formula's values)."""
    big = torch.finfo(dtype).max
    g = torch.full((8,), big, dtype=dtype)
    df = torch.tensor([0.0, 1.0] * 4, dtype=dtype)
    with torch.no_grad():
        assert_same_values(fp.select_scale(g, df.clone()), fp.select_scale_plain(g, df))


def test_select_scale_records_the_plain_select():
    """Under create_graph (grad mode on) the plain select runs, differentiable."""
    g = torch.randn(5, dtype=torch.float64, requires_grad=True)
    df = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    out = fp.select_scale(g, df)
    assert out.grad_fn is not None and "Where" in type(out.grad_fn).__name__
    (gg,) = torch.autograd.grad(out.sum(), g)
    assert torch.equal(gg, df)


# --- the activations' δ: fast select against the plain one, and against native ------------------------

ACTIVATIONS = [  # (name, ours, native, kinks)
    ("relu", tbf.relu, F.relu, (0.0,)),
    ("relu_", lambda z: tbf.relu(z * 1, inplace=True), lambda z: F.relu(z * 1, inplace=True), (0.0,)),
    ("leaky_relu", lambda z: tbf.leaky_relu(z, 0.1), lambda z: F.leaky_relu(z, 0.1), (0.0,)),
    ("elu", tbf.elu, F.elu, (0.0,)),
    ("elu_", lambda z: tbf.elu(z * 1, 0.5, inplace=True), lambda z: F.elu(z * 1, 0.5, inplace=True), (0.0,)),
    ("softplus", lambda z: tbf.softplus(z, 2.0, 3.0), lambda z: F.softplus(z, 2.0, 3.0), (1.5,)),
    ("hardtanh", tbf.hardtanh, F.hardtanh, (-1.0, 1.0)),
    ("relu6_", lambda z: tbf.relu6(z * 1, inplace=True), lambda z: F.relu6(z * 1, inplace=True), (0.0, 6.0)),
    ("hardswish", tbf.hardswish, F.hardswish, (-3.0, 3.0)),
    ("hardsigmoid", tbf.hardsigmoid, F.hardsigmoid, (-3.0, 3.0)),
    ("selu", tbf.selu, torch.selu, (0.0,)),
    ("selu_", lambda z: tbf.selu(z * 1, inplace=True), lambda z: torch.selu_(z * 1), (0.0,)),
    ("celu", lambda z: tbf.celu(z, 0.7), lambda z: F.celu(z, 0.7), (0.0,)),
    ("celu_", lambda z: tbf.celu(z * 1, 2.0, inplace=True), lambda z: F.celu(z * 1, 2.0, inplace=True), (0.0,)),
    ("threshold", lambda z: tbf.threshold(z, 0.5, -2.0), lambda z: F.threshold(z, 0.5, -2.0), (0.5,)),
    ("hardshrink", tbf.hardshrink, F.hardshrink, (-0.5, 0.5)),
    ("softshrink", tbf.softshrink, F.softshrink, (-0.5, 0.5)),
    ("prelu", lambda z: tbf.prelu(z, torch.tensor([0.25], dtype=z.dtype, device=z.device)),
     lambda z: F.prelu(z, torch.tensor([0.25], dtype=z.dtype, device=z.device)), (0.0,)),
]


def _kink_inputs(kinks, dtype, device):
    """z at and one step either side of each kink, NaN, ±inf, ±0; δ with NaN, ±inf, ±0 at every z."""
    k = torch.tensor(kinks, dtype=dtype)
    z = torch.cat([k, torch.nextafter(k, k + 1), torch.nextafter(k, k - 1),
                   torch.tensor(SPECIAL, dtype=dtype), torch.linspace(-4.1, 4.1, 15, dtype=dtype)])
    d = torch.tensor(SPECIAL + [0.3, -2.0], dtype=dtype)
    zz, dd = torch.meshgrid(z, d, indexing="ij")
    return zz.reshape(-1).to(device), dd.reshape(-1).to(device)


def _delta(fn, z, d):
    z = z.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(z), z, d)
    return g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,ours,native,kinks", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_delta_fast_select_is_the_plain_select(name, ours, native, kinks, dtype, device, monkeypatch):
    z, d = _kink_inputs(kinks, dtype, device)
    for dd in (d, torch.where(d.isfinite(), d, 0.5)):  # nonfinite δ (the select), finite δ (the product)
        fast = _delta(ours, z, dd)
        monkeypatch.setattr(fp, "_finite", lambda g: False)
        plain = _delta(ours, z, dd)
        monkeypatch.undo()
        assert_same_values(fast, plain)


@pytest.mark.parametrize("name,ours,native,kinks", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_delta_at_kinks_and_nonfinite_values_is_natives(name, ours, native, kinks):
    """float64: where native's f' is 0 an inf or NaN δ gives 0 (a select, not δ·0), and every value is
    native's (to rounding: a few are computed in another order). Not at NaN z: native's branch there
    differs between its dtypes and between its vectorised and scalar loops."""
    z, d = _kink_inputs(kinks, torch.float64, "cpu")
    z, d = z[~z.isnan()], d[~z.isnan()]
    got, want = _delta(ours, z, d), _delta(native, z, d)
    assert torch.equal(got.isnan(), want.isnan()), (z[got.isnan() != want.isnan()], d[got.isnan() != want.isnan()])
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0, equal_nan=True)
    assert torch.equal(got == 0, want == 0)


# --- scale_pieces: δ ⊙ f'(t) a piece at a time, against the whole-tensor formula ------------------------

PIECED = [  # (name, ours, native)
    ("gelu", tbf.gelu, F.gelu),
    ("gelu_tanh", lambda z: tbf.gelu(z, approximate="tanh"), lambda z: F.gelu(z, approximate="tanh")),
    ("silu", tbf.silu, F.silu),
]


def _pieces(dtype):
    """Elements in one piece of ``dtype``."""
    return fp.PIECE_BYTES // torch.empty((), dtype=dtype).element_size()


def _pieced_inputs(n, dtype, special=False):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, generator=g, dtype=torch.float64) * 3
    d = torch.randn(n, generator=g, dtype=torch.float64)
    if special:  # NaN, ±inf, ±0 in z and in δ, at the ends of pieces too
        k = len(SPECIAL)
        z[:k] = torch.tensor(SPECIAL, dtype=torch.float64)
        d[-k:] = torch.tensor(SPECIAL, dtype=torch.float64)
    return z.to(dtype), d.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,ours,native", PIECED, ids=[p[0] for p in PIECED])
@pytest.mark.parametrize("size", ["one piece", "pieces and a tail", "whole pieces"])
def test_scale_pieces_is_the_plain_formula(name, ours, native, dtype, size, monkeypatch):
    """Below the threshold the plain formula runs; above it each piece gives the plain formula's values
    (to the last bit but for the vector loops' tails: a piece ends where the whole tensor does not)."""
    monkeypatch.setattr(fp, "PIECE_BYTES", 64 * torch.empty((), dtype=dtype).element_size())
    n = {"one piece": 64, "pieces and a tail": 64 * 5 + 7, "whole pieces": 64 * 4}[size]
    for special in (False, True):
        z, d = _pieced_inputs(n, dtype, special)
        fast = _delta(ours, z, d)
        calls = []
        real = fp.scale_pieces_plain
        monkeypatch.setattr(fp, "scale_pieces_plain", lambda *a: calls.append(1) or real(*a))
        with monkeypatch.context() as m:
            m.setattr(fp, "PIECE_BYTES", 1 << 40)  # one piece: the plain formula
            plain = _delta(ours, z, d)
        assert calls, "the plain formula did not run"
        calls.clear()
        _delta(ours, z, d)
        assert bool(calls) == (size == "one piece")
        monkeypatch.setattr(fp, "scale_pieces_plain", real)
        assert torch.equal(fast.isnan(), plain.isnan())
        ok = ~fast.isnan()
        tol = {torch.float64: 1e-15, torch.float32: 1e-6}.get(dtype, 1e-2)
        torch.testing.assert_close(fast[ok], plain[ok], rtol=tol, atol=tol * 1e-3)
        # and native's values, as the plain formula has them
        want = _delta(native, z.double(), d.double())
        if dtype == torch.float64:
            ok = z.isfinite()
            assert torch.equal(fast[ok].isfinite(), want[ok].isfinite())
            ok = ok & want.isfinite()
            assert rel_err(fast[ok], want[ok]) <= 1e-10


@pytest.mark.parametrize("name,ours,native", PIECED, ids=[p[0] for p in PIECED])
def test_scale_pieces_temporaries_stay_piece_sized(name, ours, native):
    """The δ's backward holds no temporary larger than a piece: its peak live memory above what was
    live before is its output and a few pieces (native's fused backward: its output alone; the whole-tensor
    formula: two or more temporaries of the output's size)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    n = 64 * _pieces(torch.float32)
    z = torch.randn(n, requires_grad=True)
    d = torch.randn(n)
    out = ours(z)

    def peak(run):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.typed[0] == _EventType.Allocation:
                allocs.append((node.start_time_ns, node.typed[1].alloc_size))
            stack.extend(node.children)
        live = top = 0
        for _, size in sorted(allocs):
            live += size
            top = max(top, live)
        return top

    got = peak(lambda: torch.autograd.grad(out, z, d, retain_graph=True))
    assert got <= 4 * n + 8 * fp.PIECE_BYTES, (got, 4 * n)


@pytest.mark.parametrize("name,ours,native", PIECED, ids=[p[0] for p in PIECED])
def test_scale_pieces_records_the_plain_formula(name, ours, native):
    """Under create_graph the whole-tensor formula runs, differentiable twice (gradgradcheck)."""
    z = torch.randn(3 * _pieces(torch.float64) // 1024 + 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ours(t), (z[:40].detach().requires_grad_(),))
    d = torch.randn_like(z)
    (gz,) = torch.autograd.grad(ours(z), z, d, create_graph=True)
    assert gz.grad_fn is not None
