"""δ ⊙ f' for the activations whose f' is 0 on whole intervals (ReLU, Hardtanh, Threshold, the shrinks,
Hardsigmoid, Hardswish): native selects there, so an inf or NaN δ where f' = 0 gives 0, not inf·0 = NaN.

The plain formula is the select, ``torch.where(f' == 0, 0, δ ⊙ f')``. On the CPU torch's select kernel is a
scalar loop, several times slower than the product itself, and an activation's backward is mostly this
one step; there ``select_scale`` takes the product alone when δ holds no inf or NaN (one sum tells: a sum
of finite values is finite, or overflows to inf and takes the select), where the two agree: a finite δ
times 0 is 0 (−0 for a negative δ, where the select gives +0: equal values, the sign of a zero aside).
"""
from __future__ import annotations

import math

import torch

from .._common import compiling, inplace_ok, scale_


def select_scale_plain(g, df):
    """The plain formula: δ ⊙ f', and 0 wherever f' = 0 whatever δ is there."""
    return torch.where(df == 0, 0, g * df)


def select_scale(g, df):
    """``select_scale_plain(g, df)`` for a fresh temporary ``df`` (written over on the CPU fast path): on the
    CPU, where nothing is recorded and δ is finite, δ ⊙ f' in ``df``'s buffer; the plain select otherwise."""
    if g.device.type == "cpu" and inplace_ok() and not compiling() and g.dtype == df.dtype and _finite(g):
        return scale_(df, g)
    return select_scale_plain(g, df)


def _finite(g):
    """Whether δ holds no inf or NaN: its sum is finite (an overflow answers no). float16 is summed in
    float32 (its range is small); the others in their own dtype (bfloat16 accumulates in float32 and has
    float32's range)."""
    try:
        return math.isfinite(g.sum(dtype=torch.float32) if g.dtype == torch.float16 else g.sum())
    except RuntimeError:  # legacy vmap (autograd.grad(is_grads_batched=True)): no value to read
        return False
