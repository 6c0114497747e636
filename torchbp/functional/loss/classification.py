"""Classification losses: nll and cross-entropy over a class dim (class indices, or class probabilities),
binary cross-entropy on probabilities and on logits, and the KL divergence.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.nn import _reduction as _Reduction

from .._common import FP32, DeltaFunction, _cast, _named, apply, autocast_dtype, check, check_compatible, \
    check_tensor, fail, scale_
from ..fastpath import loss as _fast
from ._shared import _ENUM, _Elementwise, _check_weights_broadcast, _promote, _reduction, _spread

_NLL_FORWARD = torch.ops.aten.nll_loss_forward.default  # (loss, total weight); the overload, resolved once


# --- class losses: NLL and cross-entropy over a class dim --------------------------------------------

def _class_dim(x):
    return 0 if x.dim() == 1 else 1


def _class_view(w, x):
    """A (C,) weight shaped to broadcast along x's class dim."""
    return w.view((-1,) + (1,) * (x.dim() - _class_dim(x) - 1))


def _targets(y, w, ignore_index, dtype):
    """keep_n = [y_n ≠ ignore_index]; y with ignored entries set to class 0 (a valid index for
    gather/scatter); w_{y_n} (1 without weights), 0 where ignored."""
    keep = y != ignore_index
    y0 = torch.where(keep, y, 0)
    # (w indexed by y0 flattened: a 0-d index would be read as a Python int, which vmap cannot give)
    wy = keep.to(dtype) if w is None else torch.where(keep, w[y0.reshape(-1)].view(y0.shape), 0)
    return keep, y0, wy


def _class_spread(g, wy, reduction, z):
    """δ_ℓ per target, shaped to broadcast along z's class dim ("mean" divides by Σ_n w_{y_n})."""
    s = g / wy.sum() if reduction == "mean" else g
    return s.unsqueeze(_class_dim(z)) if reduction == "none" else s


def _check_class_input(op, input, target, weight):
    check_tensor(op, "input", input)
    check_tensor(op, "target", target)
    check(input.dim() >= 1, op, "input must have at least one dimension (the classes)")
    C = input.shape[_class_dim(input)]
    check(weight is None or (weight.dim() == 1 and weight.numel() == C), op,
          f"weight must have shape [{C}] (one per class), got {list(weight.shape) if weight is not None else None}")


def _check_index_target(op, input, target, ignore_index):
    check(target.dtype in (torch.long, torch.uint8), op,
          f"class-index target must be int64 (or uint8), got {target.dtype}")
    if input.dim() == 1:
        check(target.dim() == 0, op, f"a 1-D input (C,) needs a 0-D target, got shape {list(target.shape)}")
    elif input.dim() == 2:
        check(target.dim() == 1 and target.shape[0] == input.shape[0], op,
              f"input batch_size ({input.shape[0]}) must match target batch_size "
              f"(target shape {list(target.shape)})")
    else:
        want = [input.shape[0]] + list(input.shape[2:])
        check(list(target.shape) == want, op, f"expected target of shape {want}, got {list(target.shape)}")
    return target.long()


class NLL(DeltaFunction):
    """J = reduce(ℓ_n), ℓ_n = −w_{y_n}·x[n, y_n] over log-probabilities x (N, C, d1, ...) or (C,),
    0 for ignored targets; "mean" divides Σ_n ℓ_n by Σ_n w_{y_n} over the non-ignored n.

    δ_x[n, c] = −δ_ℓn·w_{y_n}·[c = y_n].
    """

    @staticmethod
    def forward(x, y, w, reduction, ignore_index):
        return F.nll_loss(x, y, w, ignore_index=ignore_index, reduction=reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, w, ctx.reduction, ctx.ignore_index = inputs
        ctx.shape = x.shape
        ctx.save_for_backward(y, w)

    @staticmethod
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return (None,) * 5
        y, w = ctx.saved_tensors
        x0 = g.new_zeros(ctx.shape)
        cd = _class_dim(x0)
        keep, y0, wy = _targets(y, w, ctx.ignore_index, g.dtype)
        keep, y0, wy = keep.unsqueeze(cd), y0.unsqueeze(cd), wy.unsqueeze(cd)
        # ignored rows exactly 0, as native leaves them (δ_J/0 = inf for an all-ignored "mean": 0·inf = NaN)
        src = torch.where(keep, -(_class_spread(g, wy, ctx.reduction, x0) * wy), 0).expand(y0.shape)
        return x0.scatter(cd, y0, src), None, None, None, None


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    op = "nll_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    _check_class_input(op, input, target, weight)
    check_compatible(op, input=input, weight=weight)
    target = _check_index_target(op, input, target, ignore_index)
    check(target.device == input.device, op, f"target is on {target.device} but input is on {input.device}")
    with _named(op):
        return apply(NLL, FP32, input, target, weight, reduction, int(ignore_index))


class CrossEntropy(DeltaFunction):
    """J = NLL(log_softmax(z)) with class-index targets and label smoothing ε, torch's semantics:
    ℓ_n = −(1 − ε)·w_{y_n}·logp[n, y_n] − (ε/C)·Σ_c w_c·logp[n, c], 0 where y_n is ignored;
    "mean" divides Σ_n ℓ_n by Σ_n w_{y_n} over the non-ignored n (by their count without weights).

    With q[n, c] = (1 − ε)·w_{y_n}·[c = y_n] + (ε/C)·w_c (0 rows for ignored targets),
    ℓ_n = −Σ_c q[n, c]·logp[n, c], and since ∂logp_c/∂z_k = [c = k] − p_k, p = softmax(z) = e^logp:
      δ_z[n, c] = δ_ℓn·(p[n, c]·Σ_k q[n, k] − q[n, c]).
    forward returns (J, logp, Σ_n w_{y_n}); the caller keeps J. logp is what backward reads, as native keeps
    its log_softmax (p = e^logp is one pass where softmax(z) is three). Being an output, logp stays connected
    to z, so a create_graph backward differentiates e^logp exactly: its δ comes back here as δ_logp, and
    log_softmax's δ, δ_z = δ_logp − p·Σ_c δ_logp, is added.

    backward: ``cross_entropy_delta`` below, or for the common call (no weights, no smoothing, reduced) its
    faster form ``fastpath.loss.cross_entropy_delta_unweighted``.
    """

    @staticmethod
    def forward(z, y, w, reduction, ignore_index, eps, dtype):
        if dtype is not None:  # autocast: float32 here, not by the caller (no ToCopy node; the engine casts δ_z)
            z, w = _cast(dtype, (z, w))
        cd = _class_dim(z)
        logp = torch.log_softmax(z, cd)  # torch's cross_entropy: nll_loss(log_softmax(z)) (+ smoothing)
        if z.dim() <= 2:  # torch's kernel also returns the "mean" divisor Σ_n w_{y_n}
            loss, total = _NLL_FORWARD(logp, y, w, _ENUM[reduction], ignore_index)
        else:
            loss, total = F.nll_loss(logp, y, w, ignore_index=ignore_index, reduction=reduction), None
        if eps:
            keep, _, wy = _targets(y, w, ignore_index, logp.dtype)
            smooth = torch.where(keep, -(logp if w is None else logp * _class_view(w, logp)).sum(cd), 0)
            smooth = smooth if reduction == "none" else smooth.sum() / wy.sum() if reduction == "mean" \
                else smooth.sum()
            loss = (1 - eps) * loss + (eps / z.shape[cd]) * smooth
        return loss, logp, total

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, y, w, ctx.reduction, ctx.ignore_index, ctx.eps, dtype = inputs
        _, logp, total = output
        w = _cast(dtype, (w,))[0] if dtype is not None else w  # (C,): cast again rather than kept from forward
        if total is not None:
            ctx.mark_non_differentiable(total)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logp, y, w, total)

    @staticmethod
    def backward(ctx, g, g_logp, _):
        logp, y, w, total = ctx.saved_tensors
        cd, eps = _class_dim(logp), ctx.eps
        delta = None
        if g is not None and ctx.needs_input_grad[0]:
            if _fast.cross_entropy_delta_applies(w, eps, ctx.reduction):
                delta = _fast.cross_entropy_delta_unweighted(g, logp, y, total, ctx.reduction, ctx.ignore_index)
            else:
                delta = cross_entropy_delta(g, logp, y, w, eps, ctx.reduction, ctx.ignore_index)
        if g_logp is not None and ctx.needs_input_grad[0]:  # create_graph only: e^logp's δ, through log_softmax
            d = g_logp - torch.exp(logp) * g_logp.sum(cd, keepdim=True)
            delta = d if delta is None else delta + d
        return delta, None, None, None, None, None, None


def cross_entropy_delta(g, logp, y, w, eps, reduction, ignore_index):
    """CrossEntropy's δ_z = δ_ℓ·(p·Σ_k q[n, k] − q), p = e^logp, as its docstring derives it, for every
    argument; ``fastpath.loss.cross_entropy_delta_unweighted`` computes the same for the common call."""
    cd = _class_dim(logp)
    C = logp.shape[cd]
    keep, y0, wy = _targets(y, w, ignore_index, logp.dtype)
    wy, keep, y0 = wy.unsqueeze(cd), keep.unsqueeze(cd), y0.unsqueeze(cd)
    # δ_ℓn exactly 0 for an ignored target (which then points at class 0), as native never touches those rows:
    # a select, not a product, as δ_J/0 = inf for an all-ignored batch ("mean") and 0·inf = NaN
    s = torch.where(keep, _class_spread(g, wy, reduction, logp), 0)
    sum_q = (1 - eps) * wy + keep.to(logp.dtype) * (eps / C * (C if w is None else w.sum())) if eps else wy
    delta = scale_(torch.exp(logp), s * sum_q)  # p·Σq·δ_ℓ, then − q·δ_ℓ: native's order
    delta = _fast.add_at(delta, cd, y0, (-(1 - eps) * s * wy).expand(y0.shape))
    if eps:
        delta = delta - (eps / C) * (s if w is None else s * _class_view(w, logp))
    return delta


class CrossEntropyProbs(DeltaFunction):
    """J = reduce(ℓ_n), ℓ_n = −Σ_c w_c·y'[n, c]·logp[n, c], y' = (1 − ε)y + ε/C (class probabilities);
    "mean" divides by the number of examples N·d1·... (torch's semantics: not by the weights).

      δ_z = δ_ℓ·(softmax(z)·Σ_c q_c − q),  q = w ⊙ y'
      δ_y = −δ_ℓ·(1 − ε)·w ⊙ logp
      δ_w = −Σ_(n, d...) δ_ℓ·y' ⊙ logp      (torch differentiates w here, through its composite ops)
    """

    @staticmethod
    def forward(z, y, w, reduction, eps):
        return F.cross_entropy(z, y, w, reduction=reduction, label_smoothing=eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, y, w, ctx.reduction, ctx.eps = inputs
        ctx.save_for_backward(z, y, w)

    @staticmethod
    def backward(ctx, g):
        z, y, w = ctx.saved_tensors
        need_z, need_y, need_w = ctx.needs_input_grad[:3]
        cd, eps = _class_dim(z), ctx.eps
        C = z.shape[cd]
        s = _spread(g, z.numel() // C if C else 0, ctx.reduction)  # mean over the N·d1·... examples
        if ctx.reduction == "none":
            s = s.unsqueeze(cd)
        wv = None if w is None else _class_view(w, z)
        ys = y * (1 - eps) + eps / C if eps else y
        gz = gy = gw = None
        if need_z:
            q = ys if wv is None else ys * wv
            gz = s * (torch.softmax(z, cd) * q.sum(cd, keepdim=True) - q)
        if need_y or need_w:
            s_logp = s * torch.log_softmax(z, cd)
            if need_y:
                gy = -(1 - eps) * s_logp if wv is None else -(1 - eps) * s_logp * wv
            if need_w:
                dims = [d for d in range(z.dim()) if d != cd]
                gw = -(s_logp * ys).sum(dims) if dims else -(s_logp * ys)
        return gz, gy, gw, None, None


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    op = "cross_entropy"
    eps = 0.0
    if not _fast.cross_entropy_call_is_common(input, target, weight, size_average, reduce, reduction,
                                              label_smoothing):
        reduction = _reduction(op, reduction, size_average, reduce)
        _check_class_input(op, input, target, weight)
        check(0.0 <= label_smoothing <= 1.0, op,
              f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
        eps = float(label_smoothing)
        if target.shape == input.shape:  # class probabilities (torch decides by shape, too)
            check(target.is_floating_point(), op, "a target with input's shape holds class probabilities and "
                                                  f"must be floating point, got {target.dtype}")
            check(ignore_index < 0, op, "ignore_index is not supported for class-probability targets")
            input, target, weight = _promote(op, input=input, target=target, weight=weight)
            with _named(op):
                return apply(CrossEntropyProbs, FP32, input, target, weight, reduction, eps)
        check_compatible(op, input=input, weight=weight)
        target = _check_index_target(op, input, target, ignore_index)
        check(target.device == input.device, op, f"target is on {target.device} but input is on {input.device}")
    with _named(op):
        return CrossEntropy.apply(input, target, weight, reduction, int(ignore_index), eps,
                                  autocast_dtype(FP32, (input,)))[0]


# --- binary cross-entropy -----------------------------------------------------------------------------

_BCE_EPS = float(torch.tensor(1e-12, dtype=torch.float32))  # torch's EPSILON, a float32 constant


class BCE(_Elementwise):
    """h ∈ [0, 1]:  ℓ = −w(y log h + (1 − y) log(1 − h))  (logs clamped at −100, as torch);
    ∂ℓ/∂h = w(h − y) / max(h(1 − h), 1e-12);  ∂ℓ/∂y = w(log(1 − h) − log h)  (unclamped, as torch:
    ±inf at h ∈ {0, 1})."""

    @staticmethod
    def forward(h, y, reduction, w, p):
        return F.binary_cross_entropy(h, y, w, reduction=reduction)

    @staticmethod
    def dh(s, h, y, w, p):
        d = (h - y) / (h * (1 - h)).clamp_min(_BCE_EPS) * s
        return d if w is None else d * w

    @staticmethod
    def dy(s, h, y, w, p):
        d = (torch.log1p(-h) - torch.log(h)) * s
        return d if w is None else d * w


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    op = "binary_cross_entropy"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight = _promote(op, input=input, target=target, weight=weight)
    check(target.shape == input.shape, op,
          f"target of shape {list(target.shape)} must have input's shape {list(input.shape)}")
    _check_weights_broadcast(op, input, weight=weight)
    with _named(op):
        return apply(BCE, FP32, input, target, reduction, weight, None)


def _softplus_neg(z):
    return torch.clamp_min(-z, 0) + torch.log1p(torch.exp(-z.abs()))  # log(1 + e^{−z}), stably


class BCEWithLogits(_Elementwise):
    """z logits, pos_weight p (1 when absent), l_w = 1 + (p − 1)y:
    ℓ = w((1 − y)z + l_w·log(1 + e^{−z}));
    ∂ℓ/∂z = w(σ(z)·l_w − p·y)  (= w(σ(z) − y) without p);
    ∂ℓ/∂y = w(−z + (p − 1)·log(1 + e^{−z}))."""

    @staticmethod
    def forward(z, y, reduction, w, p):
        return F.binary_cross_entropy_with_logits(z, y, w, reduction=reduction, pos_weight=p)

    @staticmethod
    def dh(s, z, y, w, p):
        sg = torch.sigmoid(z)
        d = (sg - y if p is None else sg * (1 + (p - 1) * y) - p * y) * s
        return d if w is None else d * w

    @staticmethod
    def dy(s, z, y, w, p):
        d = (-z if p is None else (p - 1) * _softplus_neg(z) - z) * s
        return d if w is None else d * w


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    op = "binary_cross_entropy_with_logits"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight, pos_weight = _promote(op, input=input, target=target, weight=weight, pos_weight=pos_weight)
    check(target.shape == input.shape, op,
          f"target of shape {list(target.shape)} must have input's shape {list(input.shape)}")
    _check_weights_broadcast(op, input, weight=weight, pos_weight=pos_weight)
    return apply(BCEWithLogits, FP32, input, target, reduction, weight, pos_weight)


# --- KL divergence ------------------------------------------------------------------------------------

class KLDiv(_Elementwise):
    """KL divergence with log-probabilities h and target y (torch's kl_div), p = log_target:
    ℓ = y·(log y − h) (0 where y = 0);  ∂ℓ/∂h = −y,  ∂ℓ/∂y = log y + 1 − h;
    with log_target, ℓ = eʸ·(y − h);  ∂ℓ/∂h = −eʸ,  ∂ℓ/∂y = eʸ·(y − h + 1).
    "batchmean" divides the sum by the batch size (dim 0)."""

    @staticmethod
    def forward(h, y, reduction, w, log_target):
        if reduction == "batchmean":
            return torch.kl_div(h, y, 2, log_target=log_target) / (h.shape[0] if h.dim() else 1)
        return torch.kl_div(h, y, _ENUM[reduction], log_target=log_target)

    @staticmethod
    def dh(s, h, y, w, log_target):
        return -(y.exp() if log_target else y) * s

    @staticmethod
    def dy(s, h, y, w, log_target):
        if log_target:
            return scale_(y.exp(), (y - h + 1) * s)
        # y/y is 1, and NaN at y = 0 as the derivative of native's xlogy(y, y) there
        return scale_(y.log() + y / y - h, s)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    op = "kl_div"
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    elif reduction == "mean":  # torch's own warning, pointing at the caller
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the support size."
                      "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                      "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
                      stacklevel=2)
    if reduction != "batchmean":
        reduction = _reduction(op, reduction)
    input, target = _promote(op, input=input, target=target)
    if input.shape != target.shape:  # torch broadcasts silently here (no size warning, unlike mse)
        try:
            input, target = torch.broadcast_tensors(input, target)
        except RuntimeError:
            fail(op, f"target of shape {list(target.shape)} does not broadcast with input of "
                     f"shape {list(input.shape)}")
    return apply(KLDiv, FP32, input, target, reduction, None, bool(log_target))


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.cross_entropy: cross_entropy, F.nll_loss: nll_loss, F.binary_cross_entropy: binary_cross_entropy,
          F.binary_cross_entropy_with_logits: binary_cross_entropy_with_logits, F.kl_div: kl_div}

__all__ = ["cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"]
