"""Regression losses, ℓ a function of h − y per element: mse, l1, smooth_l1, huber; and the derivation's
cost, half_squared_error (J = ½‖y − h‖² per example).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .._common import FP32, DeltaFunction, _cast, apply, autocast_dtype, check, fail, scale_
from ._shared import _Elementwise, _promote, _reduce, _reduction, _spread


# --- the functional forms' common path: torch's broadcast warning and its Python-level weight= ----------

def _broadcast_pair(op, input, target):
    """What torch's mse/l1/smooth_l1/huber do: warn when the sizes differ, then broadcast."""
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)
        try:
            return torch.broadcast_tensors(input, target)
        except RuntimeError:
            fail(op, f"target of shape {list(target.shape)} does not broadcast with input of "
                     f"shape {list(input.shape)}")
    return input, target


def _weighted(op, l, weight, input, reduction, mean_by_weight):
    """torch's Python-level ``weight=`` of mse/l1/huber: ℓ·w, "mean" divided by Σw (mse, l1) or by
    the count (huber). The product and sum are plain autograd, as in torch."""
    if weight.size() != input.size():
        raise ValueError(f"torchbp.functional.{op}: weight and input must have the same size, got "
                         f"{list(weight.shape)} and {list(input.shape)}")
    l = l * weight
    if reduction == "mean":
        return l.sum() / weight.sum() if mean_by_weight else l.mean()
    return _reduce(l, reduction)


def _pointwise(op, fn, input, target, reduction, p=None, weight=None, mean_by_weight=True):
    input, target = _promote(op, input=input, target=target)
    input, target = _broadcast_pair(op, input, target)
    if weight is None:
        return apply(fn, FP32, input, target, reduction, None, p)
    l = apply(fn, FP32, input, target, "none", None, p)
    return _weighted(op, l, weight, input, reduction, mean_by_weight)


# --- elementwise losses ----------------------------------------------------------------------------

class MSE(_Elementwise):
    """ℓ = (h − y)²;  ∂ℓ/∂h = 2(h − y) = −∂ℓ/∂y."""

    @staticmethod
    def forward(h, y, reduction, w, p):
        return F.mse_loss(h, y, reduction=reduction)

    @staticmethod
    def dh(s, h, y, w, p):
        return scale_(h - y, 2 * s)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _reduction("mse_loss", reduction, size_average, reduce)
    return _pointwise("mse_loss", MSE, input, target, reduction, weight=weight)


class L1(_Elementwise):
    """ℓ = |h − y|;  ∂ℓ/∂h = sign(h − y) (0 at h = y, as torch) = −∂ℓ/∂y."""

    @staticmethod
    def forward(h, y, reduction, w, p):
        return F.l1_loss(h, y, reduction=reduction)

    @staticmethod
    def dh(s, h, y, w, p):
        return scale_(torch.sign(h - y), s)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _reduction("l1_loss", reduction, size_average, reduce)
    return _pointwise("l1_loss", L1, input, target, reduction, weight=weight)


class SmoothL1(_Elementwise):
    """d = h − y, β = p > 0:  ℓ = ½d²/β where |d| < β, |d| − ½β elsewhere;
    ∂ℓ/∂h = d/β where |d| < β, sign(d) elsewhere (= −∂ℓ/∂y), i.e. clamp(d/β, −1, 1).
    β = 0 is routed to L1."""

    @staticmethod
    def forward(h, y, reduction, w, beta):
        return F.smooth_l1_loss(h, y, reduction=reduction, beta=beta)

    @staticmethod
    def dh(s, h, y, w, beta):
        return scale_(((h - y) / beta).clamp(-1, 1), s)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    reduction = _reduction("smooth_l1_loss", reduction, size_average, reduce)
    check(beta >= 0, "smooth_l1_loss", f"beta must be >= 0, got {beta}")
    if beta == 0:  # torch's own special case; also keeps d/β out of the formula
        return _pointwise("smooth_l1_loss", L1, input, target, reduction)
    return _pointwise("smooth_l1_loss", SmoothL1, input, target, reduction, float(beta))


class Huber(_Elementwise):
    """d = h − y, δ_H = p:  ℓ = ½d² where |d| < δ_H, δ_H(|d| − ½δ_H) elsewhere;
    ∂ℓ/∂h = clamp(d, −δ_H, δ_H) (= −∂ℓ/∂y)."""

    @staticmethod
    def forward(h, y, reduction, w, delta):
        return F.huber_loss(h, y, reduction=reduction, delta=delta)

    @staticmethod
    def dh(s, h, y, w, delta):
        return scale_((h - y).clamp(-delta, delta), s)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    reduction = _reduction("huber_loss", reduction)
    check(delta > 0, "huber_loss", f"delta must be > 0, got {delta}")
    return _pointwise("huber_loss", Huber, input, target, reduction, float(delta), weight, False)


# --- the derivation's cost ----------------------------------------------------------------------------------

def _per_example_dims(h):
    return tuple(range(1, h.dim())) if h.dim() >= 2 else tuple(range(h.dim()))


class HalfSquaredError(DeltaFunction):
    """The derivation's cost, J_n = ½‖y_n − h_n‖² per example n (dim 0; a 1-D input is one example).

    δ at the output: ∂J/∂h = −(y − h), times δ_J (÷ N for "mean" over the N examples); ∂J/∂y = y − h.
    """

    @staticmethod
    def forward(h, y, reduction, dtype):
        if dtype is not None:  # autocast: float32 here, not by the caller (no ToCopy nodes; the engine casts δ)
            h, y = _cast(dtype, (h, y))
        if reduction != "none":  # one fused pass: Σ_n J_n = ½ Σ (h − y)², times ½ (or ½/N for "mean")
            n = h.shape[0] if reduction == "mean" and h.dim() >= 2 else 1
            if n == 0:  # a mean over no examples: NaN, as native's mse_loss gives
                return F.mse_loss(h, y, reduction="mean") * 0.5
            return F.mse_loss(h, y, reduction="sum") * (0.5 / n)
        d = h - y
        return 0.5 * (d * d).sum(_per_example_dims(h)) if h.dim() else 0.5 * d * d

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.reduction, ctx.dtype = inputs
        ctx.n = max(h.shape[0], 1) if h.dim() >= 2 else 1
        ctx.save_for_backward(h, y)

    @staticmethod
    def backward(ctx, g):
        h, y = ctx.saved_tensors
        need_h, need_y = ctx.needs_input_grad[:2]
        if not (need_h or need_y):
            return None, None, None, None
        if ctx.dtype is not None:  # (h, y saved as given, not their float32 copies: native's memory)
            h, y = _cast(ctx.dtype, (h, y))
        s = _spread(g, ctx.n, ctx.reduction)
        if ctx.reduction == "none" and h.dim() >= 2:
            s = s.reshape(s.shape + (1,) * (h.dim() - 1))  # one δ_J per example, over its elements
        d = scale_(h - y, s)  # −(y − h), the derivation's output δ
        return (d if need_h else None), (-d if need_y else None), None, None


def half_squared_error(input, target, reduction="mean"):
    """The derivation's cost J = ½‖y − h‖² per example (dim 0), mean over the batch by default."""
    op = "half_squared_error"
    reduction = _reduction(op, reduction)
    if type(input) is torch.Tensor and type(target) is torch.Tensor and input.is_floating_point() \
            and target.is_floating_point() and input.device == target.device:
        # autocast's float32, or the promotion of mixed dtypes (bf16 h, float32 y -> float32), done inside
        # the Function: no ToCopy node, and the engine casts each δ back to its input's dtype
        dtype = autocast_dtype(FP32, (input,)) or (torch.promote_types(input.dtype, target.dtype)
                                                   if input.dtype != target.dtype else None)
    else:
        input, target = _promote(op, input=input, target=target)  # its checks name what is wrong
        dtype = autocast_dtype(FP32, (input,))
    if input.shape != target.shape:
        fail(op, f"input of shape {list(input.shape)} and target of shape {list(target.shape)} must match")
    return HalfSquaredError.apply(input, target, reduction, dtype)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.mse_loss: mse_loss, F.l1_loss: l1_loss, F.smooth_l1_loss: smooth_l1_loss, F.huber_loss: huber_loss}

__all__ = ["half_squared_error", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"]
