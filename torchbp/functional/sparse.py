"""Embedding: z = W[i], a row lookup (the affine layer with a one-hot a(l): z = Wᵀ onehot(i)).

backward, with δ = ∂J/∂z:  ∂J/∂W = Σ_positions onehot(i) δᵀ, i.e. row k of ∂J/∂W is the sum of δ over
the positions that looked up k (zero for ``padding_idx``); there is no gradient for the indices.

EmbeddingBag reduces each bag of looked-up rows to one (sum, mean or max): the same affine layer with
a(l) a bag's count vector (weighted by the per-sample weights; divided by the bag's size for mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor, scale_


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
        d = delta.reshape(-1, delta.shape[-1])
        return _grad_rows(d, idx.reshape(-1), ctx.num, ctx.padding_idx, ctx.scale, None, False), None, None, None


def _grad_rows(d, idx, num, padding_idx, by_freq, factor, fresh):
    """∂J/∂W of a lookup: zeros.index_add(0, idx, factor ⊙ d), each occurrence divided by how often its index
    occurs when ``by_freq`` (scale_grad_by_freq), row ``padding_idx`` zeroed. ``d``: one δ row per occurrence
    (``fresh``: a temporary of the caller's, scaled in place when safe; else the incoming δ, left alone)."""
    if by_freq:
        inv = torch.bincount(idx, minlength=num).to(d.dtype).reciprocal_().index_select(0, idx)
        factor = inv if factor is None else factor * inv
    if factor is not None:
        d = scale_(d, factor.unsqueeze(1)) if fresh else d * factor.unsqueeze(1)
    grad_W = d.new_zeros(num, d.shape[1]).index_add_(0, idx, d)
    if padding_idx is not None:
        grad_W[padding_idx] = 0
    return grad_W


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


# --- embedding_bag -----------------------------------------------------------------------------------

_MODES = {"sum": 0, "mean": 1, "max": 2}


class EmbeddingBag(DeltaFunction):
    """z[b] = Σ_{i in bag b} w_i W[i]  (sum; w_i = 1 without per-sample weights),
    z[b] = (1/n_b) Σ_{i in bag b} W[i]  (mean; n_b counts the bag's non-padding entries),
    z[b, d] = max_{i in bag b} W[i, d]  (max); ``padding_idx`` entries are left out, an empty bag gives 0.

    backward, with δ = ∂J/∂z and bag(i) the bag of occurrence i:
      sum:  ∂J/∂W[j] = Σ_{occurrences i of j} w_i δ[bag(i)]        (mean: δ[bag(i)] / n_bag(i))
      max:  ∂J/∂W[j, d] = Σ_{bags b whose max in feature d came from row j} δ[b, d]
      ∂J/∂w_i = ⟨δ[bag(i)], W[i]⟩   (sum only; 0 for padding entries)
    row ``padding_idx`` of ∂J/∂W is 0; ``scale_grad_by_freq`` divides each occurrence's contribution to
    ∂J/∂W by how often its index occurs in the input.

    Returns torch.embedding_bag's four outputs (z, offset2bag, bag_size, max_indices); the last three are
    integer bookkeeping from native's forward that the formulas above read.
    """

    @staticmethod
    def forward(W, idx, offsets, scale_grad_by_freq, mode, psw, include_last_offset, padding_idx):
        return torch.embedding_bag(W, idx, offsets, scale_grad_by_freq, mode, False, psw, include_last_offset,
                                   padding_idx)

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, idx, offsets, scale, mode, psw, include_last_offset, padding_idx = inputs
        _, offset2bag, bag_size, max_indices = output
        need_W, need_psw = ctx.needs_input_grad[0], ctx.needs_input_grad[5]
        ctx.mark_non_differentiable(offset2bag, bag_size, max_indices)
        if mode == 2:  # max: where each bag's max came from, and which bags are empty
            ctx.save_for_backward(max_indices if need_W else None, bag_size if need_W else None)
        else:
            # (CPU's fast sum path leaves offset2bag empty; backward then rebuilds it from the offsets)
            ctx.save_for_backward(idx, offset2bag, offsets if offset2bag.numel() != idx.numel() else None,
                                  bag_size if mode == 1 else None, psw if need_W else None, W if need_psw else None)
        ctx.num, ctx.mode, ctx.scale, ctx.padding_idx = W.shape[0], mode, scale, padding_idx

    @staticmethod
    def backward(ctx, delta, *_):
        need_W, need_psw = ctx.needs_input_grad[0], ctx.needs_input_grad[5]
        grad_W = grad_psw = None
        if ctx.mode == 2:
            max_indices, bag_size = ctx.saved_tensors
            if need_W:  # an empty bag's max_indices point nowhere (0 or -1): its δ goes nowhere
                # (bag_size may hold one entry per offset, one more than bags, on CUDA with include_last_offset)
                d = delta * (bag_size[:delta.shape[0]] > 0).unsqueeze(1)
                grad_W = d.new_zeros(ctx.num, d.shape[1]).scatter_add_(0, max_indices.long().clamp_min(0), d)
            return grad_W, None, None, None, None, None, None, None
        idx, offset2bag, offsets, bag_size, psw, W = ctx.saved_tensors
        if offsets is not None:  # bag(i) = the last bag starting at or before position i
            positions = torch.arange(idx.numel(), dtype=offsets.dtype, device=offsets.device)
            offset2bag = torch.searchsorted(offsets[:delta.shape[0]], positions, right=True) - 1
        if ctx.mode == 1:  # mean: δ / n_b (an all-padding bag has no entry whose gradient survives)
            delta = delta / bag_size[:delta.shape[0]].clamp_min(1).to(delta.dtype).unsqueeze(1)
        d = delta.index_select(0, offset2bag)  # δ[bag(i)] for every occurrence i
        if need_psw:  # a batch of dot products, without an (N, D) temporary for the products
            grad_psw = (d.unsqueeze(1) @ W.index_select(0, idx).unsqueeze(2)).reshape(-1)
            if ctx.padding_idx is not None:
                grad_psw = grad_psw * (idx != ctx.padding_idx)
        if need_W:  # each occurrence's factor w_i (/ its index's count): one (N, D) product, in d's buffer
            grad_W = _grad_rows(d, idx, ctx.num, ctx.padding_idx, ctx.scale, psw, True)
        return grad_W, None, None, None, None, grad_psw, None, None


def embedding_bag(input, weight, offsets=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
                  mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """δ twin of ``torch.nn.functional.embedding_bag``; ``sparse=True`` (sparse gradients) is refused."""
    op = "embedding_bag"
    check_tensor(op, "input", input)
    check_tensor(op, "weight", weight)
    check(input.dtype in (torch.int64, torch.int32), op,
          f"input must hold indices (torch.long or torch.int), got {input.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"torchbp.functional.{op}: weight must be 2-D (num_embeddings, embedding_dim), "
                         f"got shape {list(weight.shape)}")
    check(input.device == weight.device, op, f"input is on {input.device} but weight is on {weight.device}")
    if mode not in _MODES:
        raise ValueError(f"torchbp.functional.{op}: mode must be 'sum', 'mean' or 'max', got {mode!r}")
    check(not sparse, op, "sparse=True (a sparse gradient for weight) is not supported; use sparse=False")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError(f"torchbp.functional.{op}: mode='max' does not support scale_grad_by_freq (nor does torch)")
    psw = per_sample_weights
    if psw is not None:
        check_tensor(op, "per_sample_weights", psw)
        check(psw.is_nested == input.is_nested, op, "per_sample_weights must be nested when input is (and only then)")
        if psw.shape != input.shape:
            raise ValueError(f"torchbp.functional.{op}: per_sample_weights must have the input's shape "
                             f"{list(input.shape)}, got {list(psw.shape)}")
        if mode != "sum":
            raise NotImplementedError(f"torchbp.functional.{op}: per_sample_weights is only supported for "
                                      f"mode='sum' (as in torch), got mode={mode!r}")
        check(psw.device == weight.device and psw.dtype == weight.dtype, op,
              f"per_sample_weights ({psw.dtype} on {psw.device}) must have weight's dtype and device "
              f"({weight.dtype} on {weight.device})")
    if input.is_nested:  # a jagged batch: one bag per row, as native reads it
        offsets, include_last_offset = input.offsets(), True
        input, psw = input.values().reshape(-1), psw.values().reshape(-1) if psw is not None else None
    elif input.dim() == 2:  # fixed-size bags: one per row
        if offsets is not None:
            raise ValueError(f"torchbp.functional.{op}: offsets must be None for a 2-D input (each row is a bag)")
        offsets = torch.arange(0, input.numel(), input.shape[1], dtype=input.dtype, device=input.device)
        include_last_offset = False
        input = input.reshape(-1)
        psw = psw.reshape(-1) if psw is not None else None
    elif input.dim() == 1:
        if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1:
            raise ValueError(f"torchbp.functional.{op}: a 1-D input needs 1-D offsets (where each bag starts), "
                             f"got {'None' if offsets is None else list(getattr(offsets, 'shape', []))}")
        check(offsets.dtype in (torch.int64, torch.int32), op,
              f"offsets must hold positions (torch.long or torch.int), got {offsets.dtype}")
    else:
        raise ValueError(f"torchbp.functional.{op}: input must be 1-D (with offsets) or 2-D (fixed-size bags), "
                         f"got {input.dim()}-D")
    n = weight.shape[0]
    if padding_idx is not None:
        check(-n <= padding_idx < n, op, f"padding_idx must be within num_embeddings ({n}), got {padding_idx}")
        padding_idx = padding_idx % n
    if max_norm is not None:
        # the same in-place renormalisation native applies before the lookup (not differentiated there either)
        input = input.contiguous()
        with torch.no_grad():
            torch.embedding_renorm_(weight, input, max_norm, norm_type)
    return EmbeddingBag.apply(weight, input, offsets, bool(scale_grad_by_freq), _MODES[mode], psw,
                              bool(include_last_offset), padding_idx)[0]


def _torch_embedding_bag(weight, indices, offsets, scale_grad_by_freq=False, mode=0, sparse=False,
                         per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """torch.embedding_bag's order and four outputs (checked by native's forward)."""
    check(not sparse, "embedding_bag", "sparse=True (a sparse gradient for weight) is not supported; use sparse=False")
    if padding_idx is not None and -weight.shape[0] <= padding_idx < 0:  # counted from the end, as F does
        padding_idx += weight.shape[0]
    return EmbeddingBag.apply(weight, indices, offsets, bool(scale_grad_by_freq), mode, per_sample_weights,
                              bool(include_last_offset), padding_idx)


ROUTES.update({F.embedding_bag: embedding_bag, torch.embedding_bag: _torch_embedding_bag})

__all__ += ["embedding_bag"]
