"""δ embedding and embedding_bag (torchbp.functional.sparse) beyond the common matrix (tests/cases/sparse.py
drives float64, gradcheck, low precision, autocast, vmap, routing and the refused inputs): max_norm renorming,
int32 and empty inputs, native's exception classes, twins, routes, audit, nested input."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import assert_matches_native, is_delta, rel_err

nn = torch.nn
from cases.sparse import BAD, bag_args as _bag_args


def test_embedding_max_norm_renorms_weight_like_native():
    W = torch.randn(10, 5) * 3
    idx = torch.tensor([1, 4, 4, 8])
    ws, wn = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    ys, yn = tbf.embedding(idx, ws, max_norm=1.0), F.embedding(idx, wn, max_norm=1.0)
    assert torch.equal(ys, yn) and torch.equal(ws, wn) and not torch.equal(ws, W)  # rows 1, 4, 8 renormed
    (gs,), (gn,) = torch.autograd.grad(ys.sum(), ws), torch.autograd.grad(yn.sum(), wn)
    assert torch.equal(gs, gn)


def test_embedding_refusals_raise_natives_exception_class():
    """Each refused input of tests/cases/sparse.py (whose messages the matrix checks) raises the class of
    exception native raises for it; an out-of-range padding_idx, as native, an AssertionError."""
    for bad in BAD:
        if bad.native is None or bad.id.endswith("nested-psw"):  # (nested: native's ValueError, ours RuntimeError)
            continue
        args, kw = bad.make()
        with pytest.raises(Exception) as native:
            bad.native(*args, **kw)
        args, kw = bad.make()
        with pytest.raises(type(native.value), match=bad.match):
            bad.ours(*args, **kw)
    with pytest.raises(AssertionError, match="embedding: padding_idx must be within num_embeddings"):
        tbf.embedding(torch.tensor([1]), torch.randn(5, 3, requires_grad=True), padding_idx=5)


def test_embedding_bag_int32_indices_and_noncontiguous_weight():
    idx, offsets, _ = _bag_args("offsets", False, torch.int32)
    W = torch.randn(5, 10, dtype=torch.float64).t().requires_grad_()  # (10, 5), non-contiguous
    for mode in ("sum", "mean", "max"):
        assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W, offsets), {"mode": mode})
        assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W, offsets.long()), {"mode": mode})
    assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx.reshape(5, 2), W, None), {"mode": "sum"})


def test_embedding_bag_empty_input_and_per_sample_weight_grad_alone():
    W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("sum", "mean", "max"):  # no indices at all: two empty bags
        assert_matches_native(tbf.embedding_bag, F.embedding_bag,
                              (torch.tensor([], dtype=torch.long), W, torch.tensor([0, 0])), {"mode": mode})
    idx, offsets = torch.tensor([1, 3, 3, 0]), torch.tensor([0, 1])
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)  # only the per-sample weights need a gradient
    assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W.detach(), offsets),
                          {"mode": "sum", "per_sample_weights": w, "padding_idx": 3})


def test_embedding_bag_max_norm_renorms_weight_like_native():
    W = torch.randn(10, 5) * 3
    idx, offsets = torch.tensor([1, 4, 4, 8, 2]), torch.tensor([0, 2])
    ws, wn = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    ys = tbf.embedding_bag(idx, ws, offsets, max_norm=1.0, mode="sum")
    yn = F.embedding_bag(idx, wn, offsets, max_norm=1.0, mode="sum")
    assert torch.allclose(ys, yn) and torch.equal(ws, wn) and not torch.equal(ws, W)  # rows 1, 2, 4, 8 renormed
    (gs,), (gn,) = torch.autograd.grad(ys.sum(), ws), torch.autograd.grad(yn.sum(), wn)
    assert torch.equal(gs, gn)


@pytest.mark.parametrize("kw", [{"mode": "sum"}, {"mode": "mean", "padding_idx": 0}, {"mode": "max"},
                                {"mode": "sum", "include_last_offset": True}])
def test_embedding_bag_twin_swapped(kw):
    native = nn.EmbeddingBag(10, 4, **kw).double()
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is torchbp.nn.EmbeddingBag and isinstance(twin, nn.EmbeddingBag)
    assert repr(twin).replace("[δ]", "") == repr(native) and twin.state_dict().keys() == native.state_dict().keys()
    idx, offsets, _ = _bag_args("last_offset" if kw.get("include_last_offset") else "offsets",
                                kw.get("include_last_offset", False))
    args = [(idx, offsets), (idx.reshape(5, 2),)]
    if kw["mode"] == "sum":
        args.append((idx, offsets, torch.rand(10, dtype=torch.float64)))
    for a in args:
        if kw.get("include_last_offset") and len(a) == 1:
            continue
        ys, yn = twin(*a), native(*a)
        assert is_delta(ys) and torch.allclose(ys, yn, rtol=1e-14, atol=0)
        v = torch.randn(yn.shape, dtype=torch.float64)
        (gs,), (gn,) = torch.autograd.grad(ys, [twin.weight], v), torch.autograd.grad(yn, [native.weight], v)
        assert rel_err(gs, gn) <= 1e-10


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_audit_full_coverage_with_embedding_bag(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(20, 6, mode=mode), nn.Linear(6, 3)).double()
    r = torchbp.audit(model, torch.randint(0, 20, (4, 5)))
    assert r.ok and r.coverage == 1.0, str(r)



def test_embedding_bag_routes_under_manual_backward():
    from torchbp.functional.sparse import EmbeddingBag
    W = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(10, dtype=torch.float64, requires_grad=True)
    idx, offsets, _ = _bag_args("offsets", False)
    module = nn.EmbeddingBag(10, 4, mode="max").double()
    calls = [(lambda: F.embedding_bag(idx, W, offsets, mode="sum", per_sample_weights=w, padding_idx=-1), [W, w]),
             (lambda: F.embedding_bag(idx.reshape(5, 2), W), [W]),
             (lambda: torch.embedding_bag(W, idx, offsets, False, 2, False, None, False, 9)[0], [W]),
             (lambda: module(idx, offsets), [module.weight])]
    for f, leaves in calls:
        yn = f()
        with torchbp.manual_backward():
            ys = f()
        assert type(ys.grad_fn)._forward_cls is EmbeddingBag and torch.equal(ys, yn)
        v = torch.randn_like(yn)
        for a, b in zip(torch.autograd.grad(ys, leaves, v), torch.autograd.grad(yn, leaves, v)):
            assert rel_err(a, b) <= 1e-10
    with torchbp.manual_backward():  # torch.embedding_bag's four outputs, as native's
        out = torch.embedding_bag(W, idx, offsets, False, 1, False, None, False, None)
    for a, b in zip(out, torch.embedding_bag(W, idx, offsets, False, 1, False, None, False, None)):
        assert torch.equal(a, b)


def test_embedding_bag_nested_input():
    nested = torch.nested.nested_tensor([torch.tensor([1, 2, 2]), torch.tensor([4])], layout=torch.jagged)
    w = torch.nested.nested_tensor_from_jagged(torch.rand(4, dtype=torch.float64), nested.offsets())  # same rows
    W = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for kw in ({"mode": "mean"}, {"mode": "max"}, {"mode": "sum", "per_sample_weights": w}):
        ys, yn = tbf.embedding_bag(nested, W, **kw), F.embedding_bag(nested, W, **kw)
        assert is_delta(ys) and torch.allclose(ys, yn, rtol=1e-14, atol=0)
        (gs,), (gn,) = torch.autograd.grad(ys.sum(), W), torch.autograd.grad(yn.sum(), W)
        assert rel_err(gs, gn) <= 1e-10
