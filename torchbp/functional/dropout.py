"""Dropout: z = a ⊙ m / (1 − p), m ~ Bernoulli(1 − p) elementwise (per channel for dropout1d/2d/3d).

backward, with δ = ∂J/∂z:  δ_a = δ ⊙ m / (1 − p)  (m saved as a bool mask, one byte an element).
The mask is drawn exactly as native draws it, so the same RNG state gives the same mask and output.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor

_FUSED_DEVICES = ("cuda", "xpu", "lazy", "privateuseone")


def _times_zero(a, inplace):
    """p = 1, as native does it: a times a zero scalar (NaN stays NaN), no random numbers drawn."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    return a.mul_(zero) if inplace else a * zero


def _save_mask(ctx, inputs, output):
    """Both dropouts: (a, p, inplace, ...) in, (z, mask or None) out; the mask is saved, not differentiated."""
    if inputs[2]:
        ctx.mark_dirty(inputs[0])
    if output[1] is not None:
        ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _scaled_mask(delta, mask, scale):
    """δ ⊙ m · 1/(1−p) as one fused pass, the bool mask read as uint8 0/1: a float × bool product takes a
    slow casting path, float × uint8 a vectorised one."""
    return torch.addcmul(delta.new_zeros(()), delta, mask.view(torch.uint8), value=scale)


class Dropout(DeltaFunction):
    """z = a ⊙ m / (1 − p);  δ_a = δ ⊙ m / (1 − p)  (p = 1: z = a · 0, δ_a = δ · 0)."""

    @staticmethod
    def forward(a, p, inplace):
        if p == 1:
            return _times_zero(a, inplace), None
        if not inplace and a.device.type in _FUSED_DEVICES:  # where native at::dropout uses its fused kernel
            return torch.native_dropout(a, p, True)
        # at::dropout's CPU (and in-place) path, op for op: the same RNG draws, the same bits
        noise = torch.empty_like(a).bernoulli_(1 - p).div_(1 - p)
        out = a.mul_(noise) if inplace else a * noise
        return out, noise.bool()  # (a cast: cheaper than the comparison noise != 0 on the CPU)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_mask(ctx, inputs, output)
        p = inputs[1]
        ctx.scale = 0.0 if p == 1 else 1.0 / (1.0 - p)

    @staticmethod
    def backward(ctx, delta, _dmask):
        (mask,) = ctx.saved_tensors
        if mask is None:
            return delta * 0, None, None
        return _scaled_mask(delta, mask, ctx.scale), None, None


class InplaceDropout(DeltaFunction):
    """Both dropouts with inplace=True (p < 1): z = a ⊙ noise, written into a, with noise = m / (1 − p)
    drawn by the caller as native's in-place path draws it;  δ_a = δ ⊙ m / (1 − p).  ``saved`` is what
    backward reads: the bool mask m with ``scale`` = 1/(1 − p) (elementwise dropout), or the small
    per-channel noise itself with ``scale`` = 1. One output only: autograd lets a Function that writes a
    view in place return nothing else (the flatten → Dropout(inplace=True) of torchvision's heads).
    ``write`` False: computed out of place (the caller writes the values back, see ``_inplace``)."""

    @staticmethod
    def forward(a, noise, saved, scale, write):
        return a.mul_(noise) if write else a * noise

    @staticmethod
    def setup_context(ctx, inputs, output):
        if inputs[4]:
            ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(inputs[2])
        ctx.scale = inputs[3]

    @staticmethod
    def backward(ctx, delta):
        (saved,) = ctx.saved_tensors
        grad = _scaled_mask(delta, saved, ctx.scale) if saved.dtype == torch.bool else delta * saved
        return grad, None, None, None, None


def _zero(a):
    """p = 1 in place: (noise, saved, scale) for a times a zero scalar, as native does it (NaN stays NaN, no
    random numbers drawn); δ_a = δ · 0."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    return zero, zero, 1.0


def _inplace(op, a, noise, saved, scale):
    """InplaceDropout, with torch's refusals (a leaf that requires grad, ...) naming the op."""
    if a._is_view() and isinstance(a.grad_fn, torch.autograd.function.BackwardCFunction):
        # a view returned by a custom Function (a δ flatten) may not be modified in place under autograd:
        # out of place, then the values written back outside the graph, so the caller's tensor still
        # changes (its version bumps, as an in-place op's would)
        out = InplaceDropout.apply(a, noise, saved, scale, False)
        with torch.no_grad():
            a.copy_(out)
        return out
    try:
        return InplaceDropout.apply(a, noise, saved, scale, True)
    except RuntimeError as e:
        if "Function" not in str(e):
            raise
        raise RuntimeError(f"torchbp.functional.{op} (inplace=True): "
                           + str(e).replace("your Function", "the in-place dropout")) from e


def dropout(input, p=0.5, training=True, inplace=False):
    """δ twin of ``torch.nn.functional.dropout``."""
    check_tensor("dropout", "input", input)
    if p < 0.0 or p > 1.0:  # the type and message native gives
        raise ValueError(f"torchbp.functional.dropout: dropout probability has to be between 0 and 1, but got {p}")
    if p == 0 or not training or input.numel() == 0:
        return input  # native returns its input itself here
    check(input.is_floating_point(), "dropout", f"input must be floating point, got {input.dtype}")
    if inplace and input.requires_grad:
        if p == 1:
            return _inplace("dropout", input, *_zero(input))
        # at::dropout's in-place path, op for op: the same RNG draws, the same bits
        noise = torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)
        return _inplace("dropout", input, noise, noise.bool(), 1.0 / (1.0 - p))
    return Dropout.apply(input, float(p), bool(inplace))[0]


class FeatureDropout(DeltaFunction):
    """Channel-wise dropout (dropout1d/2d/3d): one m ~ Bernoulli(1 − p) per (sample, channel), the same
    over its positions:  z = a ⊙ m / (1 − p);  δ_a = δ ⊙ m / (1 − p).  ``lead``: 2 for (N, C, ...), 1 for
    an unbatched (C, ...). The noise is drawn as native's feature dropout draws it (one per channel, in
    order), so the same RNG state gives the same channels; it is small, and saved as it is."""

    @staticmethod
    def forward(a, p, inplace, lead):
        if p == 1:
            return _times_zero(a, inplace), None
        noise = a.new_empty(a.shape[:lead] + (1,) * (a.dim() - lead)).bernoulli_(1 - p).div_(1 - p)
        return (a.mul_(noise) if inplace else a * noise), noise

    setup_context = staticmethod(_save_mask)

    @staticmethod
    def backward(ctx, delta, _dnoise):
        (noise,) = ctx.saved_tensors
        return (delta * 0 if noise is None else delta * noise), None, None, None


def _feature_dropout(op, input, p, training, inplace, lead):
    if p == 0 or not training or input.numel() == 0:
        return input  # native returns its input itself here
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    check(input.dim() + 2 - lead >= 2, op, "Feature dropout requires at least 2 dimensions in the input")
    if inplace and input.requires_grad:
        if p == 1:
            return _inplace(op, input, *_zero(input))
        noise = input.new_empty(input.shape[:lead] + (1,) * (input.dim() - lead)).bernoulli_(1 - p).div_(1 - p)
        return _inplace(op, input, noise, noise, 1.0)
    return FeatureDropout.apply(input, float(p), bool(inplace), lead)[0]


def _check_p(op, input, p):
    check_tensor(op, "input", input)
    if p < 0.0 or p > 1.0:  # the type and message native gives
        raise ValueError(f"torchbp.functional.{op}: dropout probability has to be between 0 and 1, but got {p}")


def dropout1d(input, p=0.5, training=True, inplace=False):
    """δ twin of ``torch.nn.functional.dropout1d``: (N, C, L) or unbatched (C, L)."""
    _check_p("dropout1d", input, p)
    check(input.dim() in (2, 3), "dropout1d", f"Expected 2D or 3D input, but received a {input.dim()}D input")
    return _feature_dropout("dropout1d", input, p, training, inplace, 2 if input.dim() == 3 else 1)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """δ twin of ``torch.nn.functional.dropout2d``: (N, C, H, W); like native, a 3-D input is read as
    (N, C, L), with native's warnings."""
    _check_p("dropout2d", input, p)
    if input.dim() not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated and will "
                      "result in an error in a future release. To retain the behavior and silence this warning, "
                      "please use dropout instead.", stacklevel=2)
    if input.dim() == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim.",
                      stacklevel=2)
    return _feature_dropout("dropout2d", input, p, training, inplace, 2)


def dropout3d(input, p=0.5, training=True, inplace=False):
    """δ twin of ``torch.nn.functional.dropout3d``: (N, C, D, H, W) or unbatched (C, D, H, W)."""
    _check_p("dropout3d", input, p)
    if input.dim() not in (4, 5):
        warnings.warn(f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is deprecated and will "
                      "result in an error in a future release. To retain the behavior and silence this warning, "
                      "please use dropout instead.", stacklevel=2)
    return _feature_dropout("dropout3d", input, p, training, inplace, 2 if input.dim() == 5 else 1)


def _torch_dropout(input, p, train):
    return dropout(input, p, train)


def _torch_dropout_(input, p, train):
    return dropout(input, p, train, inplace=True)


ROUTES = {F.dropout: dropout, torch.dropout: _torch_dropout, torch.dropout_: _torch_dropout_,
          F.dropout1d: dropout1d, F.dropout2d: dropout2d, F.dropout3d: dropout3d}

__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d"]
