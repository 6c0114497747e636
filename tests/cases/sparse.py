"""torchbp.functional.sparse: embedding and embedding_bag (∂J/∂W scattered by index)."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, ROUTE, SWEEP, VMAP, Bad, Case, kw_id, module_case

CASES = []


def emb_vmap_skip(kw, tag):
    if tag == "0d":
        return {VMAP: "a 0-d index has no dim to vmap over"}
    if "max_norm" in kw:
        return {VMAP: "max_norm renorms the shared weight in place, which vmap refuses (native's too)"}
    return {}


# --- embedding ----------------------------------------------------------------------------------------------
EMB_IDX = [[0, 3, 3, 7], [7, 7, 1, 0], [9, 3, 2, 2]]  # repeats, padding rows
for kw in [{}, {"padding_idx": 0}, {"padding_idx": -1}, {"scale_grad_by_freq": True},
           {"padding_idx": 3, "scale_grad_by_freq": True}, {"max_norm": 1.0}, {"max_norm": 2.0, "norm_type": 1.0}]:
    for idx_dtype in (torch.int64, torch.int32):
        for tag, pick in (("3x4", lambda i: i), ("0d", lambda i: i[0, 0])):  # a 0-d index too
            CASES.append(Case(f"sparse.embedding[{kw_id(kw)}]-{str(idx_dtype)[6:]}-{tag}", tbf.embedding, F.embedding,
                              lambda idx_dtype=idx_dtype, pick=pick: (
                                  pick(torch.tensor(EMB_IDX, dtype=idx_dtype)), (torch.randn(10, 5) * 2).requires_grad_()),
                              kw, checks=SWEEP[FLOAT64], skip=emb_vmap_skip(kw, tag)))
# (padding_idx and scale_grad_by_freq are conventions, not derivatives: checked against native above)
CASES += [
    Case("sparse.embedding-2x3", lambda W: tbf.embedding(torch.tensor([[1, 3, 3], [0, 1, 4]]), W), None,
         lambda: (torch.randn(5, 3, requires_grad=True),), checks=(GRADCHECK,)),
    Case("sparse.embedding-64", tbf.embedding, F.embedding,
         lambda: (torch.randint(0, 20, (64,)), torch.randn(20, 16, requires_grad=True)), checks=SWEEP[LOW]),
]

# --- embedding_bag ------------------------------------------------------------------------------------------
# five bags: [1, 9, 2], [] (empty), [0, 5, 7], [7, 3], [2, 2] (all padding when padding_idx=2); repeats
BAG_IDX = [1, 9, 2, 0, 5, 7, 7, 3, 2, 2]
BAG_OFFSETS = [0, 3, 3, 6, 8]


def bag_args(form, include_last_offset, idx_dtype=torch.int64):
    idx = torch.tensor(BAG_IDX, dtype=idx_dtype)
    if form == "2d":  # fixed-size bags of 2 (native refuses offsets and include_last_offset there)
        return idx.reshape(5, 2), None, False
    offsets = torch.tensor(BAG_OFFSETS + ([len(BAG_IDX)] if include_last_offset else []), dtype=idx_dtype)
    return idx, offsets, include_last_offset


def bags_from_embedding(input, weight, offsets=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
                        mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False,
                        padding_idx=None):
    """An oracle for sum/mean built from native F.embedding and index_add: native's CPU embedding_bag
    divides by the wrong count under scale_grad_by_freq (pytorch#190063, torch <= 2.13), F.embedding
    does not."""
    psw = per_sample_weights
    if input.dim() == 2:
        offsets = torch.arange(0, input.numel(), input.shape[1], device=input.device)
        input, psw = input.reshape(-1), psw.reshape(-1) if psw is not None else None
    elif include_last_offset:
        offsets = offsets[:-1]
    bag = torch.searchsorted(offsets, torch.arange(len(input), dtype=offsets.dtype, device=input.device),
                             right=True) - 1  # the bag of each position
    keep = torch.ones_like(input, dtype=torch.bool) if padding_idx is None else input != padding_idx % len(weight)
    e = F.embedding(input, weight, scale_grad_by_freq=scale_grad_by_freq) * keep.unsqueeze(1)
    e = e * psw.unsqueeze(1) if psw is not None else e
    z = e.new_zeros(len(offsets), weight.shape[1]).index_add(0, bag, e)
    if mode == "mean":
        z = z / z.new_zeros(len(offsets)).index_add(0, bag, keep.to(z.dtype)).clamp_min(1).unsqueeze(1)
    return z


NO_BAG_SLICES = "a slice of the indices is no set of bags (1-D indices need their offsets; the batches of 2-D bags below take VMAP)"
ORACLE_ROUTE = "native here is the oracle, built of other ops"
for form in ("offsets", "last_offset", "2d"):
    for padding_idx in (None, 2, -1):
        for mode, psw, scale in [("sum", False, False), ("sum", True, False), ("sum", False, True),
                                 ("sum", True, True), ("mean", False, False), ("mean", False, True),
                                 ("max", False, False)]:
            def args(form=form):
                idx, offsets, _ = bag_args(form, form == "last_offset")
                return idx, (torch.randn(10, 5) * 2).requires_grad_(), offsets

            def kwargs(form=form, padding_idx=padding_idx, mode=mode, psw=psw, scale=scale):
                idx, _, last = bag_args(form, form == "last_offset")
                kw = dict(mode=mode, padding_idx=padding_idx, scale_grad_by_freq=scale, include_last_offset=last)
                if psw:
                    kw["per_sample_weights"] = torch.rand(idx.shape, requires_grad=True)
                return kw
            tag = f"{form}-pad{padding_idx}-{mode}{'-psw' if psw else ''}{'-scale' if scale else ''}"
            # native's scale_grad_by_freq is wrong on the CPU: the oracle stands in (see bags_from_embedding)
            CASES.append(Case(f"sparse.embedding_bag-{tag}", tbf.embedding_bag,
                              bags_from_embedding if scale else F.embedding_bag, args, kwargs, checks=SWEEP[FLOAT64],
                              skip={VMAP: NO_BAG_SLICES, **({ROUTE: ORACLE_ROUTE} if scale else {})}))
            if mode != "max" and not scale:  # the oracle itself agrees with native where native is right
                CASES.append(Case(f"sparse.bags_from_embedding-{tag}", bags_from_embedding, F.embedding_bag, args,
                                  kwargs, checks=(FLOAT64,)))

# gradcheck and gradgradcheck (torch's own embedding_bag has no double backward: its backward is one kernel,
# _embedding_bag_backward; the δ formulas are plain ops, so ours has one)
_IDX, _OFFSETS, _ = bag_args("offsets", False)
for mode in ("sum", "mean", "max"):
    CASES.append(Case(f"sparse.embedding_bag-{mode}-pad2", lambda W, mode=mode: tbf.embedding_bag(
        _IDX, W, _OFFSETS, mode=mode, padding_idx=2), None, lambda: (torch.randn(10, 3, requires_grad=True),),
        checks=(GRADCHECK,)))
CASES += [
    Case("sparse.embedding_bag-sum-psw", lambda W, w: tbf.embedding_bag(_IDX, W, _OFFSETS, mode="sum",
                                                                        per_sample_weights=w), None,
         lambda: (torch.randn(10, 3, requires_grad=True), torch.rand(10, requires_grad=True)), checks=(GRADCHECK,)),
    # (scale_grad_by_freq is a convention, not a derivative: checked against the oracle above)
    Case("sparse.embedding_bag-2d-sum-psw-pad7", lambda W, w: tbf.embedding_bag(
        _IDX.reshape(5, 2), W, mode="sum", per_sample_weights=w, padding_idx=7), None,
        lambda: (torch.randn(10, 3, requires_grad=True), torch.rand(5, 2, requires_grad=True)), checks=(GRADCHECK,)),
]


def _bag_low(mode):
    g = torch.Generator().manual_seed(0)
    idx, offsets = torch.randint(0, 20, (96,), generator=g), torch.tensor([0, 5, 5, 30, 64, 90])
    kw = {"mode": "sum" if mode == "psw" else mode}
    if mode == "psw":
        kw["per_sample_weights"] = torch.rand(96, generator=g).requires_grad_()
    return (idx, torch.randn(20, 16, generator=g).requires_grad_(), offsets), kw


for mode in ("sum", "mean", "max", "psw"):
    CASES.append(Case(f"sparse.embedding_bag-96-{mode}", tbf.embedding_bag, F.embedding_bag,
                      lambda mode=mode: _bag_low(mode)[0], lambda mode=mode: _bag_low(mode)[1], checks=SWEEP[LOW]))

# per-example gradients: a batch of 2-D inputs (fixed-size bags), one set of bags per example
for mode in ("sum", "mean", "max"):
    for padding_idx in (None, 2):
        CASES.append(Case(f"sparse.embedding_bag-batch-of-2d-pad{padding_idx}-{mode}", tbf.embedding_bag,
                          F.embedding_bag, lambda: (torch.tensor(BAG_IDX * 3).reshape(3, 5, 2),
                                                    (torch.randn(10, 5) * 2).requires_grad_()),
                          {"mode": mode, "padding_idx": padding_idx}, checks=(VMAP,)))


# --- the twins of nn.Embedding and nn.EmbeddingBag (2-D input: fixed-size bags) ----------------------------
def _index(shape):
    return torch.tensor(BAG_IDX * 3)[:torch.Size(shape).numel()].reshape(shape)


for cls, kw, shape in [(torch.nn.Embedding, {"num_embeddings": 10, "embedding_dim": 4}, (3, 4)),
                       (torch.nn.Embedding, {"num_embeddings": 10, "embedding_dim": 4, "padding_idx": 7}, (3, 4)),
                       (torch.nn.EmbeddingBag, {"num_embeddings": 10, "embedding_dim": 4, "mode": "sum"}, (5, 2)),
                       (torch.nn.EmbeddingBag, {"num_embeddings": 10, "embedding_dim": 4, "mode": "mean",
                                                "padding_idx": 0}, (5, 2)),
                       (torch.nn.EmbeddingBag, {"num_embeddings": 10, "embedding_dim": 4, "mode": "max"}, (5, 2))]:
    CASES.append(module_case("sparse", cls, kw, shape, SWEEP[FLOAT64], x=_index,
                             skip={VMAP: NO_BAG_SLICES} if cls is torch.nn.EmbeddingBag else {}))


# --- refused inputs --------------------------------------------------------------------------------------
SPARSE_WHY = "torch returns a sparse gradient for W; the δ formulas give dense ones only, so torchbp refuses it"


def _emb_bad(tag, args, match, kw=None, native=F.embedding, why=""):
    return Bad(f"sparse.embedding-{tag}", tbf.embedding, native, args, f"torchbp.functional.embedding: {match}",
               kw or {}, why=why)


def _bag_bad(tag, match, kw=None, args=None, native=F.embedding_bag, why=""):
    def default():
        return torch.tensor([1, 2, 4]), torch.randn(5, 3, requires_grad=True), torch.tensor([0, 2])
    return Bad(f"sparse.embedding_bag-{tag}", tbf.embedding_bag, native, args or default,
               f"torchbp.functional.embedding_bag: {match}", kw or {}, why=why)


def _nested():
    return torch.nested.nested_tensor([torch.tensor([1, 2, 4]), torch.tensor([1])], layout=torch.jagged)


BAD = [
    _emb_bad("sparse", lambda: (torch.tensor([1]), torch.randn(5, 3, requires_grad=True)), "sparse=True",
             {"sparse": True}, native=None, why=SPARSE_WHY),
    _emb_bad("float-indices", lambda: (torch.tensor([1.0]), torch.randn(5, 3)), "input must hold indices"),
    _emb_bad("weight-1d", lambda: (torch.tensor([1]), torch.randn(5)), "weight must be 2-D"),
    _bag_bad("sparse", "sparse=True", {"sparse": True}, native=None, why=SPARSE_WHY),
    _bag_bad("padding_idx", "padding_idx must be within num_embeddings", {"padding_idx": 5}),
    _bag_bad("mode", "mode must be 'sum', 'mean' or 'max'", {"mode": "min"}),
    _bag_bad("max-scale", "mode='max' does not support scale_grad_by_freq", {"mode": "max", "scale_grad_by_freq": True}),
    _bag_bad("psw-mean", "per_sample_weights is only supported for mode='sum'",
             lambda: {"per_sample_weights": torch.rand(3)}),
    _bag_bad("psw-shape", r"per_sample_weights must have the input's shape \[3\]",
             lambda: {"mode": "sum", "per_sample_weights": torch.rand(4)}),
    _bag_bad("psw-dtype", "per_sample_weights .* must have weight's dtype",
             lambda: {"mode": "sum", "per_sample_weights": torch.rand(3, dtype=torch.float64)}),
    _bag_bad("float-indices", "input must hold indices", args=lambda: (torch.tensor([1.0, 2, 4]), torch.randn(5, 3),
                                                                       torch.tensor([0, 2]))),
    _bag_bad("weight-1d", "weight must be 2-D", args=lambda: (torch.tensor([1, 2, 4]), torch.randn(5), torch.tensor([0, 2]))),
    _bag_bad("no-offsets", "a 1-D input needs 1-D offsets", args=lambda: (torch.tensor([1, 2, 4]), torch.randn(5, 3))),
    _bag_bad("2d-offsets", "offsets must be None for a 2-D input",
             args=lambda: (torch.tensor([[1], [2], [4]]), torch.randn(5, 3), torch.tensor([0, 2]))),
    _bag_bad("3d", "input must be 1-D .* or 2-D .*, got 3-D", args=lambda: (torch.tensor([[[1]], [[2]], [[4]]]),
                                                                         torch.randn(5, 3))),
    _bag_bad("float-offsets", "offsets must hold positions",
             args=lambda: (torch.tensor([1, 2, 4]), torch.randn(5, 3), torch.tensor([0.0, 2.0]))),
    _bag_bad("nested-psw", "per_sample_weights must be nested when input is", lambda: {
        "mode": "sum", "per_sample_weights": torch.rand(4)}, args=lambda: (_nested(), torch.randn(5, 3))),
]
