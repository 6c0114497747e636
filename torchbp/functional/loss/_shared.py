"""What the loss families share: the reductions (δ_J spread back over the terms ℓ), torch's argument
handling (legacy size_average / reduce, type promotion, broadcast checks) and the base of the elementwise losses.
"""
from __future__ import annotations

import math

import torch
from torch.nn import _reduction as _Reduction

from .._common import DeltaFunction, check, check_compatible, check_tensor


_REDUCTIONS = ("none", "mean", "sum")


_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch's Reduction enum, for its loss kernels


# --- reductions: J = reduce(ℓ), and δ_ℓ from δ_J ---------------------------------------------------

def _reduce(l, reduction):
    return l if reduction == "none" else l.sum() if reduction == "sum" else l.mean()


def _spread(g, n, reduction):
    """δ_ℓ from δ_J: the same δ for every term of a sum, δ/n for a mean of n terms ("batchmean": n is the
    batch size)."""
    return g / n if reduction == "mean" or reduction == "batchmean" else g


def _n_terms(reduction, *tensors):
    """The count "mean" divides by: the number of terms ℓ of the broadcast inputs."""
    return math.prod(torch.broadcast_shapes(*(t.shape for t in tensors))) if reduction == "mean" else 1


# --- arguments, as torch.nn.functional's losses take them ----------------------------------------------

def _reduction(op, reduction, size_average=None, reduce=None):
    if size_average is not None or reduce is not None:  # legacy args override reduction, as in torch
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"torchbp.functional.{op}: {reduction!r} is not a valid value for reduction "
                         f"(use 'none', 'mean' or 'sum')")
    return reduction


def _promote(op, **tensors):
    """Type promotion as torch's losses do it (bf16 input, float32 target -> float32), then the
    device / floating-point checks; returns the tensors in the order given."""
    values = tuple(tensors.values())
    t0 = values[0]
    if isinstance(t0, torch.Tensor):  # the common case, one dtype: nothing to promote
        for t in values[1:]:
            if t is not None and not (isinstance(t, torch.Tensor) and t.dtype == t0.dtype):
                break
        else:
            check_compatible(op, **tensors)
            return values
    for name, t in tensors.items():
        if t is not None:
            check_tensor(op, name, t)
    dtypes = [t.dtype for t in tensors.values() if t is not None]
    dtype = dtypes[0]
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    out = {k: t if t is None or t.dtype == dtype else t.to(dtype) for k, t in tensors.items()}
    check_compatible(op, **out)
    return tuple(out.values())


def _check_weights_broadcast(op, input, **tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        try:
            ok = torch.broadcast_shapes(input.shape, t.shape) == input.shape
        except RuntimeError:
            ok = False
        check(ok, op, f"{name} of shape {list(t.shape)} does not broadcast to input's shape {list(input.shape)}")


# --- elementwise losses: ℓ = f(h, y) per element ---------------------------------------------------
# forward is torch's own forward kernel (allowed for δ Functions; it also gives torch's exact values and
# input checks); backward is the formula.

class _Elementwise(DeltaFunction):
    """J = reduce(ℓ(h, y)), ``forward(h, y, reduction, w, p)``: w an optional weight tensor (broadcast
    against h), p an option (beta, delta, pos_weight, or None).

    δ_h = δ_ℓ ⊙ ∂ℓ/∂h  (``dh(s, h, y, w, p)`` with s = δ_ℓ);
    δ_y = δ_ℓ ⊙ ∂ℓ/∂y  (``dy``; None when ∂ℓ/∂y = −∂ℓ/∂h, the losses of h − y).
    """

    dy = None

    def __init_subclass__(cls, **kwargs):
        # bound per class (as in activation._Pointwise): under vmap ctx._forward_cls is a wrapper
        super().__init_subclass__(**kwargs)

        def setup_context(ctx, inputs, output):
            h, y, ctx.reduction, w, p = inputs
            ctx.n = h.numel() if ctx.reduction != "batchmean" else h.shape[0] if h.dim() else 1
            ctx.p_tensor = isinstance(p, torch.Tensor)
            ctx.p = None if ctx.p_tensor else p
            ctx.save_for_backward(h, y, w, p if ctx.p_tensor else None)

        def backward(ctx, g):
            h, y, w, p = ctx.saved_tensors
            p = p if ctx.p_tensor else ctx.p
            need_h, need_y = ctx.needs_input_grad[:2]
            s = _spread(g, ctx.n, ctx.reduction)
            gh = gy = None
            if cls.dy is None:
                d = cls.dh(s, h, y, w, p) if need_h or need_y else None
                gh, gy = (d if need_h else None), (-d if need_y else None)
            else:
                gh = cls.dh(s, h, y, w, p) if need_h else None
                gy = cls.dy(s, h, y, w, p) if need_y else None
            return gh, gy, None, None, None

        cls.setup_context, cls.backward = staticmethod(setup_context), staticmethod(backward)
