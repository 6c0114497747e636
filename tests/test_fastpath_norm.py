"""fastpath.norm (normalization's backward expanded and in place, the half-precision batch chunking) against
the plain formula (normalization._plain, what backward runs under create_graph and vmap): float64 to 1e-12,
float32 / bfloat16 / float16 by the low-precision rule against a float64 oracle, on both sides of the chunk
threshold (one chunk, several chunks, a chunk per sample), CPU and (skipped without a GPU) CUDA."""
import pytest
import torch

from torchbp.functional import normalization as norm
from torchbp.functional.fastpath import norm as fast
from util import DEVICES, FLOOR, RecordOps, rel_err

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

CASES = {  # name: (call(x, w, b), x shape, parameter shape)
    "batch_norm": (lambda x, w, b: norm.batch_norm(x, torch.zeros_like(w), torch.ones_like(w), w, b, training=True),
                   (6, 4, 5, 3), (4,)),
    "batch_norm_eval": (lambda x, w, b: norm.batch_norm(x, torch.linspace(-1, 1, 4).to(w), torch.linspace(0.5, 2, 4).to(w),
                                                        w, b), (6, 4, 5, 3), (4,)),
    "instance_norm": (lambda x, w, b: norm.instance_norm(x, weight=w, bias=b), (6, 4, 7), (4,)),
    "group_norm": (lambda x, w, b: norm.group_norm(x, 2, w, b), (6, 4, 5, 3), (4,)),
    "layer_norm": (lambda x, w, b: norm.layer_norm(x, (5, 3), w, b), (6, 4, 5, 3), (5, 3)),
    "rms_norm": (lambda x, w, b: norm.rms_norm(x, (5, 3), w), (6, 4, 5, 3), (5, 3)),
}
# elements per chunk: one chunk for the whole batch, two samples a chunk, one sample a chunk
CHUNKS = {"one": 1 << 30, "several": 2 * 4 * 5 * 3, "per_sample": 1}


def _inputs(name, dtype, device):
    g = torch.Generator().manual_seed(1)
    _, xshape, pshape = CASES[name]
    x = (torch.randn(xshape, generator=g, dtype=torch.float64) * 2 + 3).to(device)
    w = (torch.rand(pshape, generator=g, dtype=torch.float64) + 0.5).to(device)
    b = torch.randn(pshape, generator=g, dtype=torch.float64).to(device)
    d = torch.randn(xshape, generator=g, dtype=torch.float64).to(device)
    # the parameters in float32 with a half input (native's mixed kernels), else in the input's dtype
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return x.to(dtype), w.to(pdtype), b.to(pdtype), d.to(dtype)


def _grads(name, x, w, b, d):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    out = CASES[name][0](x, w, b)
    leaves = [x, w] if name == "rms_norm" else [x, w, b]
    return torch.autograd.grad(out, leaves, d)


def _plain_grads(name, x, w, b, d, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(norm, "_in_place_ok", lambda delta: False)
        return _grads(name, x, w, b, d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", list(CHUNKS), ids=list(CHUNKS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_in_place_backward_is_the_plain_formula(name, dtype, chunk, device, monkeypatch):
    monkeypatch.setattr(fast, "HALF_CHUNK", CHUNKS[chunk])
    calls = []
    real = fast.cells_in_place
    monkeypatch.setattr(norm, "cells_in_place", lambda *a, **k: calls.append(a) or real(*a, **k))
    x, w, b, d = _inputs(name, dtype, device)
    got = _grads(name, x, w, b, d)
    if name not in ("layer_norm", "rms_norm"):
        assert calls, "the in-place path did not run"
    plain = _plain_grads(name, x, w, b, d, monkeypatch)
    if dtype == torch.float64:
        for g, p in zip(got, plain):
            assert rel_err(g, p) <= 1e-12
        return
    oracle = _grads(name, *(t.double() for t in (x, w, b, d)))
    for i, (g, p, o) in enumerate(zip(got, plain, oracle)):
        assert g.dtype == p.dtype
        eg, ep = rel_err(g, o), rel_err(p, o)
        assert eg <= 2 * ep + FLOOR[dtype], f"{name} grad {i}: err {eg:.3e} vs the plain formula's {ep:.3e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_batch_is_chunked_below_the_threshold(dtype, monkeypatch):
    """The chunking is real: below the threshold δ_x is assembled from several chunks (x[s] per chunk),
    above it one chunk holds the batch; both give the plain formula's values."""
    x = torch.randn(8, 3, 4, dtype=dtype)
    sizes = []
    real_to = torch.Tensor.to

    def spy(t, *a, **k):
        if t.dtype == dtype and k.get("copy"):
            sizes.append(t.shape[0])
        return real_to(t, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    for chunk, expected in ((1 << 30, {8}), (3 * 4 * 2, {2})):
        sizes.clear()
        monkeypatch.setattr(fast, "HALF_CHUNK", chunk)
        xr = x.clone().requires_grad_()
        out = norm.batch_norm(xr, None, None, training=True)
        out.backward(torch.ones_like(out))
        assert set(sizes) == expected


def test_chunk_threshold_is_an_argument():
    """cells_in_place's threshold may be passed: one chunk and a chunk per sample agree."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=g).to(torch.bfloat16)
    d = torch.randn(5, 3, 4, generator=g).to(torch.bfloat16)
    mu = x.float().mean((0, 2), keepdim=True)
    r = x.float().var((0, 2), correction=0, keepdim=True).add(1e-5).rsqrt()
    w = torch.rand(1, 3, 1) + 0.5
    with torch.no_grad():
        one = fast.cells_in_place(d, x, mu, r, w, (0, 2), (0, 2), (0, 2), True, True, True, True, chunk_elems=1 << 30)
        per = fast.cells_in_place(d, x, mu, r, w, (0, 2), (0, 2), (0, 2), True, True, True, True, chunk_elems=1)
    for a, b in zip(one, per):  # (one chunk hands δ_x back in float32, several in x's dtype: the caller casts)
        assert rel_err(a.to(x.dtype), b.to(x.dtype)) <= 4e-3


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm", "group_norm", "layer_norm"])
def test_backward_makes_no_zero_tensors_for_the_statistics(name):
    """μ and r are outputs of the Function that carry no δ: its backward gets None for them, not zero tensors
    autograd would make (and fill) on every step."""
    x, w, b, d = _inputs(name, torch.float32, "cpu")
    x.requires_grad_()
    out = CASES[name][0](x, w, b)
    with RecordOps() as ops:
        out.backward(d)
    assert x.grad is not None and not [n for n in ops.names if n.startswith(("zeros", "fill", "full"))]
