"""Margin losses over classes and over learned distances: multi_margin, multilabel_margin,
triplet_margin_with_distance.

Forward is torch's own forward kernel where it has one (its values and input checks), backward the formula.
The hinge's derivative is [u > 0] in the class losses (native's kernels) and, in the distance loss, native's
clamp's at u = 0 (``above_bound``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import FP32, DeltaFunction, _named, above_bound, apply, check, check_tensor
from .loss import _ENUM, _promote, _reduction, _spread


class MultiMargin(DeltaFunction):
    """Per example n with target class y over C classes (the last dim), u_i = margin − h_y + h_i:
    ℓ_n = (w_y / C) Σ_{i ≠ y} max(0, u_i)^p   (p = 1 or 2).

    backward, with δ_ℓn from the reduction: for i ≠ y,  δ_h_i = δ_ℓn (w_y / C) · p·u_i^{p−1} [u_i > 0];
    δ_h_y = −Σ_{i ≠ y} δ_h_i.  torch differentiates neither the target nor the weight.
    """

    @staticmethod
    def forward(h, y, p, margin, w, reduction):
        return torch._C._nn.multi_margin_loss(h, y, p, margin, w, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.p, ctx.margin, w, ctx.reduction = inputs
        ctx.save_for_backward(h, y, w)

    @staticmethod
    def backward(ctx, g):
        h, y, w = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        h2, y2 = h.reshape(-1, h.shape[-1] if h.dim() else 1), y.reshape(-1, 1)  # 0-D: one example, one class
        N, C = h2.shape
        u = ctx.margin - h2.gather(1, y2) + h2
        is_y = torch.zeros_like(h2, dtype=torch.bool).scatter_(1, y2, True)
        on = (u > 0) & ~is_y
        d = on.to(h.dtype) if ctx.p == 1 else 2 * u * on
        s = _spread(g, N, ctx.reduction).reshape(-1, 1) / C
        if w is not None:
            s = s * w[y2]
        G = d * s
        G = G - is_y * G.sum(1, keepdim=True)
        return G.reshape(h.shape), None, None, None, None, None


class MultilabelMargin(DeltaFunction):
    """Per example n: the targets y_1 … y_k (target's row up to its first −1), T their set, over C classes:
    ℓ_n = (1/C) Σ_j Σ_{i ∉ T} max(0, 1 − h_{y_j} + h_i).

    backward, with δ_ℓn from the reduction and a_ji = [1 − h_{y_j} + h_i > 0] (i ∉ T):
    δ_h_i += δ_ℓn/C · Σ_j a_ji,   δ_h_{y_j} −= δ_ℓn/C · Σ_{i ∉ T} a_ji.  The target gets no δ (as in torch).
    """

    @staticmethod
    def forward(h, y, reduction):
        return torch._C._nn.multilabel_margin_loss(h, y, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.reduction = inputs
        ctx.save_for_backward(h, y)

    @staticmethod
    def backward(ctx, g):
        h, y = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        C = h.shape[-1] if h.dim() else 1  # 0-D: one example, one class
        h2, y2 = h.reshape(-1, C), y.reshape(-1, C)
        N = h2.shape[0]
        valid = (y2 != -1).cumprod(1).bool()  # the slots before the first −1
        idx = y2.clamp(min=0)
        in_T = torch.zeros_like(y2).scatter_add_(1, idx, valid.long()) > 0  # the target set T, per row
        u = 1 - h2.gather(1, idx).unsqueeze(2) + h2.unsqueeze(1)  # (N, slot j, class i)
        a = ((u > 0) & valid.unsqueeze(2) & ~in_T.unsqueeze(1)).to(h.dtype)
        s = _spread(g, N, ctx.reduction).reshape(-1, 1) / C
        G = a.sum(1) - torch.zeros_like(h2).scatter_add(1, idx, a.sum(2))
        return (G * s).reshape(h.shape), None, None


class TripletHinge(DeltaFunction):
    """ℓ = max(0, margin + d_p − d_n'),  d_n' = min(d_n, d_s) with swap (d_n without);  the distances are the
    user's distance_function's outputs (their own δ's, or native's, carry δ on from here).

    backward, with δ_ℓ from the reduction and a = [margin + d_p − d_n' > 0] (native's clamp at 0):
    δ_dp = δ_ℓ a,  δ_dn' = −δ_ℓ a, split by the minimum: to d_n where d_n < d_s, to d_s where d_s < d_n, half
    each on a tie (torch.minimum's rule).
    """

    @staticmethod
    def forward(dp, dn, ds, margin, reduction):
        dmin = dn if ds is None else torch.minimum(dn, ds)
        loss = torch.clamp_min(margin + dp - dmin, 0)
        return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss

    @staticmethod
    def setup_context(ctx, inputs, output):
        dp, dn, ds, ctx.margin, ctx.reduction = inputs
        ctx.n = dp.numel()
        ctx.save_for_backward(dp, dn, ds)

    @staticmethod
    def backward(ctx, g):
        dp, dn, ds = ctx.saved_tensors
        dmin = dn if ds is None else torch.minimum(dn, ds)
        s = _spread(g, ctx.n, ctx.reduction) * above_bound(ctx.margin + dp - dmin)
        if ds is None:
            return s, -s, None, None, None
        half = (dn == ds) * 0.5
        return s, -s * ((dn < ds) + half), -s * ((ds < dn) + half), None, None


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None, reduce=None,
                      reduction="mean"):
    """δ twin of ``torch.nn.functional.multi_margin_loss``."""
    op = "multi_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    check(p in (1, 2), op, f"only p == 1 and p == 2 supported, got {p}")
    check_tensor(op, "input", input)
    check_tensor(op, "target", target)
    if weight is not None:
        input, weight = _promote(op, input=input, weight=weight)
    check(input.dim() in (0, 1, 2), op, f"expected 0-D, 1-D (unbatched) or 2-D input, got shape {list(input.shape)}")
    with _named(op):
        return apply(MultiMargin, FP32, input, target, int(p), float(margin), weight, reduction)


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """δ twin of ``torch.nn.functional.multilabel_margin_loss``."""
    op = "multilabel_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    check_tensor(op, "input", input)
    check_tensor(op, "target", target)
    check(input.dim() in (0, 1, 2) and target.shape == input.shape, op,
          f"expected 0-D, 1-D or 2-D input with a target of its shape, got {list(input.shape)} and "
          f"{list(target.shape)}")
    with _named(op):
        return apply(MultilabelMargin, FP32, input, target, reduction)


def triplet_margin_with_distance_loss(anchor, positive, negative, *, distance_function=None, margin=1.0,
                                      swap=False, reduction="mean"):
    """δ twin of ``torch.nn.functional.triplet_margin_with_distance_loss`` (the default distance: the δ
    pairwise_distance)."""
    op = "triplet_margin_with_distance_loss"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"torchbp.functional.{op}: {reduction} is not a valid value for reduction")
    if margin <= 0:
        raise ValueError(f"torchbp.functional.{op}: margin must be greater than 0, got {margin}")
    check(anchor.dim() == positive.dim() == negative.dim(), op,
          f"The anchor, positive, and negative tensors are expected to have the same number of dimensions, "
          f"but got: anchor {anchor.dim()}D, positive {positive.dim()}D, and negative {negative.dim()}D inputs")
    if distance_function is None:
        from .distance import pairwise_distance as distance_function
    dp = distance_function(anchor, positive)
    dn = distance_function(anchor, negative)
    ds = distance_function(positive, negative) if swap else None
    return TripletHinge.apply(dp, dn, ds, float(margin), reduction)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.multi_margin_loss: multi_margin_loss, F.multilabel_margin_loss: multilabel_margin_loss,
          F.triplet_margin_with_distance_loss: triplet_margin_with_distance_loss}

__all__ = ["multi_margin_loss", "multilabel_margin_loss", "triplet_margin_with_distance_loss"]
