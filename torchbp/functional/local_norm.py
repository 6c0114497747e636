"""Local response normalization (nn.LocalResponseNorm): each channel divided by a power of its neighbours'
mean square, across the channel dim (dim 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor


def _window_sum(t, before, after):
    """Σ_{c' = c − before}^{c + after} t[:, c'] along dim 1, zero outside the channels."""
    z = t.new_zeros(t.shape[0], 1, *t.shape[2:])
    parts = [z.expand(-1, before, *t.shape[2:]), t, z.expand(-1, after, *t.shape[2:])]
    return torch.cat(parts, 1).unfold(1, before + after + 1, 1).sum(-1)


class LocalResponseNorm(DeltaFunction):
    """z_c = a_c / D_c,  D_c = (k + α s_c)^β,  s_c = (1/n) Σ_{c' ∈ W(c)} a_{c'}²,  W(c) = [c − ⌊n/2⌋, c + ⌊(n−1)/2⌋]
    (n = size; channels outside count as 0).

    backward: δ_a_c = δ_c / D_c − (2αβ/n) a_c Σ_{c' : c ∈ W(c')} δ_{c'} a_{c'} (k + α s_{c'})^{−β−1}
    (the sum over c' ∈ [c − ⌊(n−1)/2⌋, c + ⌊n/2⌋]: the window turned around).
    """

    @staticmethod
    def forward(x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.size, ctx.alpha, ctx.beta, ctx.k = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        n, alpha, beta = ctx.size, ctx.alpha, ctx.beta
        lo, hi = n // 2, (n - 1) // 2
        base = ctx.k + alpha * _window_sum(x * x, lo, hi) / n
        t = delta * x * base.pow(-beta - 1)
        return (delta * base.pow(-beta) - (2 * alpha * beta / n) * x * _window_sum(t, hi, lo),
                None, None, None, None)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """δ twin of ``torch.nn.functional.local_response_norm``."""
    op = "local_response_norm"
    check_tensor(op, "input", input)
    if input.dim() < 3:  # the type and message native gives
        raise ValueError(f"torchbp.functional.{op}: Expected 3D or higher dimensionality input (got "
                         f"{input.dim()} dimensions)")
    if input.numel() == 0:
        return input
    check(isinstance(size, int) and size > 0, op, f"size must be a positive int, got {size!r}")
    return LocalResponseNorm.apply(input, size, float(alpha), float(beta), float(k))


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.local_response_norm: local_response_norm}
__all__ = ["local_response_norm"]
