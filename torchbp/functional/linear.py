"""The affine layer of the seed: z(l+1) = W(l) a(l) + b(l), batched as ``z = a @ W.T + b``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import LOWER, DeltaFunction, apply, check, check_compatible


class Linear(DeltaFunction):
    """z = a Wᵀ + b over any leading dims of ``a``.

    backward, with δ = ∂J/∂z arriving from the layer above:
      δ_a  = δ W          (the seed's Σ_q W_{q←k} δ_q, before the activation's f')
      ∂J/∂W = δᵀ a        (the seed's δ(l+1) a(l)ᵀ, summed over the batch and leading dims)
      ∂J/∂b = Σ_batch δ   (the seed's δ(l+1))
    """

    @staticmethod
    def forward(a, W, b):
        return F.linear(a, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, W, b = inputs
        need_a, need_W, need_b = ctx.needs_input_grad
        ctx.save_for_backward(a if need_W else None, W if need_a else None)
        ctx.has_bias = b is not None

    @staticmethod
    def backward(ctx, delta):
        a, W = ctx.saved_tensors
        need_a, need_W, need_b = ctx.needs_input_grad
        d2 = delta.reshape(-1, delta.shape[-1]) if (need_W or need_b) else None
        grad_a = delta @ W if need_a else None
        grad_W = d2.t() @ a.reshape(-1, a.shape[-1]) if need_W else None
        grad_b = d2.sum(0) if need_b and ctx.has_bias else None
        return grad_a, grad_W, grad_b


def linear(input, weight, bias=None):
    """δ twin of ``torch.nn.functional.linear``."""
    check_compatible("linear", input=input, weight=weight, bias=bias)
    check(weight.dim() == 2, "linear", f"weight must be 2-D (out_features, in_features), got shape {list(weight.shape)}")
    check(input.dim() >= 1 and input.shape[-1] == weight.shape[1], "linear",
          f"input has {input.shape[-1] if input.dim() else 0} features in its last dim (shape {list(input.shape)}) "
          f"but weight expects {weight.shape[1]} (shape {list(weight.shape)})")
    check(bias is None or tuple(bias.shape) == (weight.shape[0],), "linear",
          f"bias must have shape [{weight.shape[0]}], got {list(bias.shape) if bias is not None else None}")
    return apply(Linear, LOWER, input, weight, bias)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.linear: linear}

__all__ = ["linear"]
