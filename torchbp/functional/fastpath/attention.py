"""How the scaled-dot-product-attention δ (``torchbp.functional.attention``) lays out its work; the formulas
stay there.

- ``query_rows``: backward recomputes P = softmax(s Q Kᵀ + M) one block of query rows at a time (each row's
  softmax is exact on its own), so that no Lq×Lk piece grows past ``PIECE_BYTES`` of its device type.
  The plain formula is one block holding every row. On the CPU the pieces are kept small: each one is a
  transient that native's fused flash backward never holds. On a GPU each block costs its own kernel
  launches, so a block is as large as memory comfortably allows.
- ``folded``: where query, key, value and δ_O share their batch dims (no broadcast batch, no grouped heads),
  backward reshapes them once to one batch dim: each batched matrix product is then a plain ``bmm`` on
  operands laid out once, where ``matmul`` over the original views (heads sliced from one projection)
  would copy its operands again for every product.
- ``scaled_scores``: S = s Q Kᵀ + M, with a 2-D additive M (a causal mask, a plain Lq×Lk mask) added by
  the matrix product itself (``baddbmm``) on folded operands; the plain formula is the product, then the
  scaling, then the mask (``scaled_scores_plain``).

``tests/test_fastpath_attention.py`` holds each of these against the plain formula in every dtype.
"""
from __future__ import annotations

import torch

# bytes of one Lq×Lk piece of backward's work, by device type (None: any other)
PIECE_BYTES = {"cpu": 2 << 20, None: 256 << 20}


def query_rows(batch: int, lk: int, element_size: int, device_type: str, table=None) -> int:
    """Query rows per block of the backward: as many as keep batch × rows × Lk elements within the device's
    piece size (``table``: ``PIECE_BYTES`` unless given), at least one."""
    table = PIECE_BYTES if table is None else table
    piece = table.get(device_type, table[None])
    return max(1, piece // max(1, batch * lk * element_size))


def folded(q, k, v, delta, groups: int) -> bool:
    """Whether q, k, v and δ_O can be taken as one batch dim each (their batch dims equal, no grouped heads)."""
    return groups == 1 and q.dim() > 2 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] == delta.shape[:-2]


def fold(t):
    """``t`` with its batch dims as one (a view where its layout allows, else one copy)."""
    return t.reshape(t.shape[:-2].numel(), t.shape[-2], t.shape[-1])  # (sizes spelled out: -1 is ambiguous when empty)


def scaled_scores_plain(q, k, s, additive, graph: bool):
    """S = s Q Kᵀ + M (``additive``: M, or None), batched over the leading dims; S is fresh (changed in place
    unless ``graph``)."""
    S = q @ k.mT
    S = S * s if graph else S.mul_(s)
    if additive is None:
        return S
    return S + additive if graph else S.add_(additive)


def scaled_scores(q, k, s, additive, graph: bool):
    """``scaled_scores_plain``, with a 2-D ``additive`` on 3-D (folded) operands added by ``baddbmm``: one
    pass over S fewer."""
    if additive is not None and additive.dim() <= 2 and q.dim() == 3 and k.dim() == 3:
        return torch.baddbmm(additive, q, k.mT, alpha=s)
    return scaled_scores_plain(q, k, s, additive, graph)
