"""Two ways of taking δ ⊙ f' for an activation faster than its plain formula.

``select_scale``: δ ⊙ f' for the activations whose f' is 0 on whole intervals (ReLU, Hardtanh, Threshold, the shrinks,
Hardsigmoid, Hardswish): native selects there, so an inf or NaN δ where f' = 0 gives 0, not inf·0 = NaN.

The plain formula is the select, ``torch.where(f' == 0, 0, δ ⊙ f')``. On the CPU torch's select kernel is a
scalar loop, several times slower than the product itself, and an activation's backward is mostly this
one step; there ``select_scale`` takes the product alone when δ holds no inf or NaN (one sum tells: a sum
of finite values is finite, or overflows to inf and takes the select), where the two agree: a finite δ
times 0 is 0 (−0 for a negative δ, where the select gives +0: equal values, the sign of a zero aside).

``scale_pieces``: δ ⊙ f'(t) for an activation whose f' takes several passes and temporaries of t's size
(GELU: Φ(z) + z·φ(z); SiLU: σ(z)(1 + z(1 − σ(z)))). The plain formula is ``df(t)`` whole, then the product;
native's fused backward holds no temporary. On the CPU, where nothing is recorded, f' is taken one piece of
``PIECE_BYTES`` at a time and each product written into the one output: the temporaries are a piece's
size (a backward's peak memory is then native's), and a piece's passes run in cache. ``gelu_scale`` does
the same for GELU with one temporary fewer (Φ(z) taken whole in the output, z·φ(z) added in pieces).
"""
from __future__ import annotations

import math

import torch

from .._common import compiling, inplace_ok, scale_

# bytes of one piece of f' (and of each temporary it takes) on the CPU
PIECE_BYTES = 128 << 10


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


def scale_pieces_plain(g, t, df):
    """The plain formula: δ ⊙ f'(t), with f' = ``df(t)`` a fresh tensor of t's shape."""
    return scale_(df(t), g)


def scale_pieces(g, t, df):
    """``scale_pieces_plain(g, t, df)``: on the CPU, where nothing is recorded and δ and t are alike
    (contiguous, one shape, one dtype), in pieces of ``PIECE_BYTES`` written into one fresh output."""
    n = PIECE_BYTES // max(1, t.element_size())
    if t.numel() <= n or t.device.type != "cpu" or not inplace_ok() or compiling() or g.shape != t.shape \
            or g.dtype != t.dtype or not (g.is_contiguous() and t.is_contiguous()):
        return scale_pieces_plain(g, t, df)
    out = torch.empty_like(t)
    tf, gf, of = t.view(-1), g.view(-1), out.view(-1)
    for i in range(0, tf.numel(), n):
        torch.mul(df(tf[i:i + n]), gf[i:i + n], out=of[i:i + n])
    return out


_INV_SQRT_2 = 1 / math.sqrt(2.0)
_INV_SQRT_2PI = 1 / math.sqrt(2.0 * math.pi)


def gelu_scale(g, z, df):
    """``scale_pieces(g, z, df)`` for GELU's f'(z) = Φ(z) + z·φ(z) (``df``), with one temporary fewer: Φ(z)
    is taken whole in the output itself (one pass each: z/√2, erf, +1, ×½), z·φ(z) added a piece at a time
    (a piece's passes are few, so the pieces can be as large as ``scale_pieces``' and half as many live)."""
    n = 2 * PIECE_BYTES // max(1, z.element_size())
    if z.numel() <= n or z.device.type != "cpu" or not inplace_ok() or compiling() or g.shape != z.shape \
            or g.dtype != z.dtype or not (g.is_contiguous() and z.is_contiguous()):
        return scale_pieces(g, z, df)
    out = torch.mul(z, _INV_SQRT_2).erf_().add_(1).mul_(0.5)
    zf, of = z.view(-1), out.view(-1)
    for i in range(0, zf.numel(), n):
        zc = zf[i:i + n]
        of[i:i + n].add_(zc.square().mul_(-0.5).exp_().mul_(zc), alpha=_INV_SQRT_2PI)
    return out.mul_(g)
