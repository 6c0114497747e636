"""Norms and distances: normalize, cosine_similarity, pairwise_distance.

They share one derivative, that of a p-norm n = ‖x‖_p along a dim, which ``_dnorm`` writes out:
  ∂n/∂x = sign(x) |x|^{p−1} / n^{p−1}   (p = 2: x / n;  p = 1: sign(x);  p = ∞: sign(x) at the maxima, shared
  evenly between ties;  p = 0: 0), and 0 where n = 0 (torch's convention at the norm's kink).
"""
from __future__ import annotations

import math

import torch

from ._common import FP32_CUDA, DeltaFunction, apply, check, check_compatible, check_tensor


def _dnorm(x, n, p, dim, g):
    """g · ∂‖x‖_p/∂x, n = ‖x‖_p along ``dim`` (keepdim), g broadcast along ``dim``; written in differentiable
    ops for double backward (the n = 0 entries divide by 1, then are zeroed)."""
    if p == 0:
        return torch.zeros_like(x)
    if p == 1:
        return x.sgn() * g
    zero = n == 0
    n_ = torch.where(zero, torch.ones_like(n), n)
    if math.isinf(p):
        ax = x.abs()
        mask = ((ax == n) | ax.isnan()).to(x.dtype)
        return x.sgn() * (g / mask.sum(dim, keepdim=True)) * mask
    if p < 1:
        xz = x == 0
        ax = torch.where(xz, torch.ones_like(x), x.abs())
        return torch.where(xz, torch.zeros_like(x), x.sgn() * ax.pow(p - 1)) * g * n.pow(1 - p)
    scale = torch.where(zero, torch.zeros_like(n), g / (n_ if p == 2 else n_.pow(p - 1)))
    if p == 2:
        return x * scale
    return (x.sgn() * x.abs().pow(p - 1) if p < 2 else x * x.abs().pow(p - 2)) * scale


class Normalize(DeltaFunction):
    """a = x / d,  d = max(n, eps),  n = ‖x‖_p along ``dim``.

    backward: δ_x = δ / d − [n ≥ eps] (Σ_dim δ ⊙ x) / d² · ∂n/∂x   (∂n/∂x: the module doc).
    """

    @staticmethod
    def forward(x, p, dim, eps):
        return x / x.norm(p, dim, keepdim=True).clamp_min(eps).expand_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.p, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        p, dim, eps = ctx.p, ctx.dim, ctx.eps
        n = x.norm(p, dim, keepdim=True)
        d = n.clamp_min(eps)
        s = (delta * x).sum(dim, keepdim=True) / (d * d)
        return delta / d - _dnorm(x, n, p, dim, torch.where(n >= eps, s, torch.zeros_like(s))), None, None, None


def _broadcast_back(g, shape):
    return g if g.shape == shape else g.sum_to_size(shape)


class CosineSimilarity(DeltaFunction):
    """y = Σ_dim u ⊙ v,  u = x1 / d1,  v = x2 / d2,  d_k = max(‖x_k‖₂, eps) (x1, x2 broadcast together).

    backward (torch clamps the norms' values but differentiates the plain norms):
      δ_x1 = δ · (v / d1 − y · x1 / (d1 ‖x1‖₂)),   δ_x2 = δ · (u / d2 − y · x2 / (d2 ‖x2‖₂))
    (the second terms 0 where the norm is 0), each summed back to its input's shape.
    """

    @staticmethod
    def forward(x1, x2, dim, eps):
        a, b = torch.broadcast_tensors(x1, x2)
        d1 = torch.linalg.vector_norm(a, 2, dim=dim, keepdim=True).clamp_min(eps)
        d2 = torch.linalg.vector_norm(b, 2, dim=dim, keepdim=True).clamp_min(eps)
        return ((a / d1) * (b / d2)).sum(dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(x1, x2)

    @staticmethod
    def backward(ctx, delta):
        x1, x2 = ctx.saved_tensors
        dim, eps = ctx.dim, ctx.eps
        a, b = torch.broadcast_tensors(x1, x2)
        n1 = torch.linalg.vector_norm(a, 2, dim=dim, keepdim=True)
        n2 = torch.linalg.vector_norm(b, 2, dim=dim, keepdim=True)
        d1, d2 = n1.clamp_min(eps), n2.clamp_min(eps)
        u, v = a / d1, b / d2
        y = (u * v).sum(dim, keepdim=True)
        dk = delta.unsqueeze(dim)
        g1 = g2 = None
        if ctx.needs_input_grad[0]:
            g1 = _broadcast_back(dk * (v / d1 - _dnorm(a, n1, 2, dim, y / d1)), x1.shape)
        if ctx.needs_input_grad[1]:
            g2 = _broadcast_back(dk * (u / d2 - _dnorm(b, n2, 2, dim, y / d2)), x2.shape)
        return g1, g2, None, None


class PairwiseDistance(DeltaFunction):
    """y = ‖x1 − x2 + eps‖_p along the last dim (x1, x2 broadcast together).

    backward: with r = x1 − x2 + eps,  δ_x1 = δ · ∂‖r‖_p/∂r,  δ_x2 = −δ · ∂‖r‖_p/∂r  (∂: the module doc),
    each summed back to its input's shape.
    """

    @staticmethod
    def forward(x1, x2, p, eps, keepdim):
        return torch.linalg.vector_norm(x1 - x2 + eps, p, dim=-1, keepdim=keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, ctx.p, ctx.eps, ctx.keepdim = inputs
        ctx.save_for_backward(x1, x2)

    @staticmethod
    def backward(ctx, delta):
        x1, x2 = ctx.saved_tensors
        r = x1 - x2 + ctx.eps
        n = torch.linalg.vector_norm(r, ctx.p, dim=-1, keepdim=True)
        g = _dnorm(r, n, ctx.p, -1, delta if ctx.keepdim else delta.unsqueeze(-1))
        return (_broadcast_back(g, x1.shape) if ctx.needs_input_grad[0] else None,
                _broadcast_back(-g, x2.shape) if ctx.needs_input_grad[1] else None, None, None, None)


def _dim_of(op, shape_dims, dim):
    n = max(shape_dims, 1)
    check(isinstance(dim, int) and -n <= dim < n, op, f"dim={dim!r} is out of range for {n}-D inputs")
    return dim % n


def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """δ twin of ``torch.nn.functional.normalize``."""
    check_tensor("normalize", "input", input)
    check(out is None, "normalize", "out= is not differentiable (torch's own normalize with out= records no "
                                    "gradient); call it without out=")
    check(input.is_floating_point(), "normalize", f"input must be floating point, got {input.dtype}")
    return apply(Normalize, FP32_CUDA, input, float(p), _dim_of("normalize", input.dim(), dim), float(eps))


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """δ twin of ``torch.nn.functional.cosine_similarity`` (``torch.cosine_similarity``)."""
    check_tensor("cosine_similarity", "x1", x1)
    check_tensor("cosine_similarity", "x2", x2)
    check_compatible("cosine_similarity", x1=x1, x2=x2)
    d = _dim_of("cosine_similarity", max(x1.dim(), x2.dim()), dim)
    return apply(CosineSimilarity, FP32_CUDA, x1, x2, d, float(eps))


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """δ twin of ``torch.nn.functional.pairwise_distance`` (``torch.pairwise_distance``)."""
    check_tensor("pairwise_distance", "x1", x1)
    check_tensor("pairwise_distance", "x2", x2)
    check_compatible("pairwise_distance", x1=x1, x2=x2)
    return apply(PairwiseDistance, FP32_CUDA, x1, x2, float(p), float(eps), bool(keepdim))


# native callable -> δ twin with the same signature; read by torchbp.registry (F.cosine_similarity is
# torch.cosine_similarity, F.pairwise_distance is torch.pairwise_distance)
ROUTES = {torch.nn.functional.normalize: normalize, torch.cosine_similarity: cosine_similarity,
          torch.pairwise_distance: pairwise_distance}

__all__ = ["normalize", "cosine_similarity", "pairwise_distance"]
