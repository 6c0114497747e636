"""Embedding: z = W[i], a row lookup (the affine layer with a one-hot a(l): z = Wᵀ onehot(i)).

backward, with δ = ∂J/∂z:  ∂J/∂W = Σ_positions onehot(i) δᵀ, i.e. row k of ∂J/∂W is the sum of δ over
the positions that looked up k (zero for ``padding_idx``); there is no gradient for the indices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor


class Embedding(DeltaFunction):
    """z = W[i];  ∂J/∂W = zeros.index_add(0, i, δ), row ``padding_idx`` zeroed; with
    ``scale_grad_by_freq`` each contribution is divided by how often its index occurs in ``i``."""

    @staticmethod
    def forward(W, idx, padding_idx, scale_grad_by_freq):
        return F.embedding(idx, W)

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, idx, padding_idx, scale_grad_by_freq = inputs
        ctx.save_for_backward(idx)
        ctx.num, ctx.padding_idx, ctx.scale = W.shape[0], padding_idx, scale_grad_by_freq

    @staticmethod
    def backward(ctx, delta):
        (idx,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        i = idx.reshape(-1)
        d = delta.reshape(-1, delta.shape[-1])
        if ctx.scale:
            d = d / torch.bincount(i, minlength=ctx.num).to(d.dtype)[i].unsqueeze(1)
        grad_W = d.new_zeros(ctx.num, d.shape[1]).index_add_(0, i, d)
        if ctx.padding_idx is not None:
            grad_W[ctx.padding_idx] = 0
        return grad_W, None, None, None


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """δ twin of ``torch.nn.functional.embedding``; ``sparse=True`` (sparse gradients) is refused."""
    op = "embedding"
    check_tensor(op, "input", input)
    check_tensor(op, "weight", weight)
    check(input.dtype in (torch.int64, torch.int32), op,
          f"input must hold indices (torch.long or torch.int), got {input.dtype}")
    check(weight.dim() == 2, op, f"weight must be 2-D (num_embeddings, embedding_dim), got shape {list(weight.shape)}")
    check(input.device == weight.device, op, f"input is on {input.device} but weight is on {weight.device}")
    check(not sparse, op, "sparse=True (a sparse gradient for weight) is not supported; use sparse=False")
    n = weight.shape[0]
    if padding_idx is not None:
        if not -n <= padding_idx < n:  # native raises AssertionError here too
            raise AssertionError(f"torchbp.functional.{op}: padding_idx must be within num_embeddings "
                                 f"({n}), got {padding_idx}")
        padding_idx = padding_idx % n
    if max_norm is not None:
        # the same in-place renormalisation native applies before the lookup (not differentiated there either)
        input = input.contiguous()
        with torch.no_grad():
            torch.embedding_renorm_(weight, input, max_norm, norm_type)
    return Embedding.apply(weight, input, padding_idx, bool(scale_grad_by_freq))


def _torch_embedding(weight, input, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """torch.embedding's order and convention (padding_idx=-1 for none)."""
    return embedding(input, weight, padding_idx if padding_idx >= 0 else None, None, 2.0,
                     scale_grad_by_freq, sparse)


ROUTES = {F.embedding: embedding, torch.embedding: _torch_embedding}

__all__ = ["embedding"]
