"""fastpath.attention (how the SDPA δ lays out its backward) against the plain formulas: the scores
S = s Q Kᵀ + M with the mask added by the product against product, scale, mask; the folded batch layout
against the unfolded one; the query blocks on both sides of the piece size; in every floating dtype."""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from torchbp.functional import attention
from torchbp.functional.fastpath import attention as fa
from util import FLOOR, rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]
LOW = [torch.float32, torch.bfloat16, torch.float16]


def _causal(n, m, row0=0, dtype=torch.float64):
    hidden = torch.ones(n, m, dtype=torch.bool).triu_(row0 + 1)
    return torch.zeros(n, m, dtype=dtype).masked_fill_(hidden, float("-inf"))


MASKS = {
    "none": lambda n, m, b: None,
    "causal": lambda n, m, b: _causal(n, m),
    "causal_row0": lambda n, m, b: _causal(n, m, 2),
    "float2d": lambda n, m, b: torch.randn(n, m, dtype=torch.float64),
    "float3d": lambda n, m, b: torch.randn(b, 1, m, dtype=torch.float64),  # not 2-D: the plain form
}


def _qk(b=6, n=5, m=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, d, generator=g, dtype=torch.float64),
            torch.randn(b, m, d, generator=g, dtype=torch.float64))


def _finite_err(s, r):
    keep = torch.isfinite(r)
    assert torch.equal(keep, torch.isfinite(s))  # -inf exactly where the mask hides a key
    return rel_err(s[keep], r[keep])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("graph", [False, True], ids=["first_order", "graph"])
def test_scaled_scores_float64_is_the_plain_formula(mask, graph, device):
    q, k = (t.to(device) for t in _qk())
    M = MASKS[mask](5, 7, 6)
    M = M.to(device) if M is not None else None
    got = fa.scaled_scores(q, k, 0.3, M, graph)
    want = fa.scaled_scores_plain(q, k, 0.3, M, graph)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _finite_err(got, want) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mask", list(MASKS))
def test_scaled_scores_low_precision(mask, dtype, device):
    """err(fast, float64 oracle) <= 2 err(plain, oracle) + floor(dtype)."""
    q, k = _qk()
    M = MASKS[mask](5, 7, 6)
    oracle = fa.scaled_scores_plain(q, k, 0.3, M, False)
    ql, kl = q.to(device, dtype), k.to(device, dtype)
    Ml = M.to(device, dtype) if M is not None else None
    got = fa.scaled_scores(ql, kl, 0.3, Ml, False).double().cpu()
    plain = fa.scaled_scores_plain(ql, kl, 0.3, Ml, False).double().cpu()
    assert _finite_err(got, oracle) <= 2 * _finite_err(plain, oracle) + FLOOR[dtype]


def test_scaled_scores_adds_a_2d_mask_in_the_product(monkeypatch):
    """The 2-D mask on 3-D operands is the product's own (baddbmm); other shapes take the plain form."""
    q, k = _qk()
    monkeypatch.setattr(fa, "scaled_scores_plain", lambda *a: pytest.fail("the plain form ran"))
    fa.scaled_scores(q, k, 0.3, _causal(5, 7), False)
    with pytest.raises(pytest.fail.Exception):
        fa.scaled_scores(q, k, 0.3, torch.randn(6, 1, 7, dtype=torch.float64), False)


@pytest.mark.parametrize("shapes,groups,expected", [
    (((2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 5, 6), (2, 3, 4, 6)), 1, True),
    (((3, 4, 8), (3, 5, 8), (3, 5, 6), (3, 4, 6)), 1, True),
    (((4, 8), (5, 8), (5, 6), (4, 6)), 1, False),  # no batch dims
    (((2, 3, 4, 8), (1, 3, 5, 8), (1, 3, 5, 6), (2, 3, 4, 6)), 1, False),  # broadcast batch
    (((2, 4, 4, 8), (2, 2, 5, 8), (2, 2, 5, 6), (2, 4, 4, 6)), 2, False),  # grouped heads
])
def test_folded(shapes, groups, expected):
    assert fa.folded(*(torch.empty(s) for s in shapes), groups) is expected


@pytest.mark.parametrize("contiguous", [True, False])
def test_fold_keeps_values(contiguous):
    t = torch.randn(2, 5, 3, 4)
    t = t if contiguous else t.transpose(1, 2)
    f = fa.fold(t)
    assert f.shape == (t.shape[0] * t.shape[1], t.shape[2], t.shape[3])
    assert torch.equal(f.view(t.shape), t)
    assert fa.fold(torch.empty(2, 3, 0, 4)).shape == (6, 0, 4)


@pytest.mark.parametrize("batch,lk,size,piece,rows", [
    (32, 64, 4, 1 << 20, 128),  # 32 · 64 · 4 B a row: 128 rows fill 1 MiB exactly
    (32, 64, 4, (1 << 20) - 1, 127),  # one byte less: one row fewer
    (32, 64, 4, 1, 1),  # at least one row
    (0, 64, 4, 1 << 20, 1 << 20),  # empty batch: no division by zero
])
def test_query_rows_on_both_sides_of_the_piece(batch, lk, size, piece, rows):
    assert fa.query_rows(batch, lk, size, "cpu", {"cpu": piece, None: 1}) == rows


def test_query_rows_reads_the_device_table():
    assert fa.query_rows(1, 1, 4, "cpu") == fa.PIECE_BYTES["cpu"] // 4
    assert fa.query_rows(1, 1, 4, "meta") == fa.PIECE_BYTES[None] // 4


# --- the δ with the folded layout against the same δ unfolded, and against native ----------------------

def _mask(kind, b, h, n, m):
    if kind == "bool2d":
        mk = torch.rand(n, m) > 0.3
        mk[:, 0] = True
        return mk
    if kind == "float4d":
        return torch.randn(b, 1, 1, m)
    if kind == "float4d_grad":
        return torch.randn(b, h, n, m, dtype=torch.float64, requires_grad=True)
    return None


CASES = [(None, False), (None, True), ("bool2d", False), ("float4d", False), ("float4d_grad", False)]


def _grads(fn, q, k, v, mask, causal, g):
    leaves = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    out = fn(q, k, v, attn_mask=mask, is_causal=causal)
    return [out] + list(torch.autograd.grad(out, leaves, g))


def _inputs(dtype, kind, seed=0):
    torch.manual_seed(seed)
    b, h, n, m, d = 2, 3, 6, 6, 8
    # heads sliced from one projection (the layout transformers and MultiheadAttention give SDPA)
    q, k, v = (torch.randn(b, n, h, d, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    mask = _mask(kind, b, h, n, m)
    g = torch.randn(b, h, n, d, dtype=torch.float64)
    cast = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    if mask is not None and mask.is_floating_point():
        mask = mask.detach().to(dtype).requires_grad_(mask.requires_grad)
    return cast, mask, g.to(dtype)


@pytest.mark.parametrize("blocks", [False, True], ids=["one_block", "row_blocks"])
@pytest.mark.parametrize("kind,causal", CASES, ids=str)
def test_folded_backward_float64_is_the_unfolded_one(kind, causal, blocks, monkeypatch):
    if blocks:
        monkeypatch.setattr(attention, "_PIECE_BYTES", {None: 1})
    (q, k, v), mask, g = _inputs(torch.float64, kind)
    folds = []
    real = fa.folded
    monkeypatch.setattr(fa, "folded", lambda *a: folds.append(real(*a)) or folds[-1])
    fast = _grads(tbf.scaled_dot_product_attention, q, k, v, mask, causal, g)
    assert folds == [True]
    monkeypatch.setattr(fa, "folded", lambda *a: False)
    plain = _grads(tbf.scaled_dot_product_attention, q, k, v, mask, causal, g)
    native = _grads(F.scaled_dot_product_attention, q, k, v, mask, causal, g)
    for f, p, n in zip(fast, plain, native):
        assert rel_err(f, p) <= 1e-12
        assert rel_err(f, n) <= 1e-10


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kind,causal", CASES, ids=str)
def test_folded_backward_low_precision(kind, causal, dtype, monkeypatch):
    """The folded layout against native's error, both against the float64 oracle."""
    (q, k, v), mask, g = _inputs(dtype, kind)
    (qo, ko, vo), mo, go = _inputs(torch.float64, kind)
    oracle = _grads(F.scaled_dot_product_attention, qo, ko, vo, mo, causal, go)
    fast = _grads(tbf.scaled_dot_product_attention, q, k, v, mask, causal, g)
    monkeypatch.setattr(fa, "folded", lambda *a: False)
    plain = _grads(tbf.scaled_dot_product_attention, q, k, v, mask, causal, g)
    native = _grads(F.scaled_dot_product_attention, q, k, v, mask, causal, g)
    for f, p, n, o in zip(fast, plain, native, oracle):
        ef = rel_err(f.double(), o)
        assert ef <= 2 * rel_err(n.double(), o) + FLOOR[dtype]
        assert ef <= 2 * rel_err(p.double(), o) + FLOOR[dtype]


def test_folded_backward_double_backward():
    (q, k, v), mask, _ = _inputs(torch.float64, None)
    q, k, v = (t.detach()[:1, :2, :3, :4].requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradgradcheck(lambda q, k, v: tbf.scaled_dot_product_attention(q, k, v, is_causal=True),
                                        (q, k, v))
