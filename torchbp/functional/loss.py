"""Costs J(h, y): where back-propagation starts, δ at the output = ∂J/∂h.

The derivation's cost is ``HalfSquaredError``, J = ½‖y − h‖² per example, whose δ is −(y − h).
Every loss reduces per-element (or per-example) terms ℓ: reduction "none" keeps them, "sum" adds
them, "mean" divides the sum by their count (by the summed class weights for weighted NLL / CE).
backward spreads the arriving δ_J back over the terms, δ_ℓ = δ_J (or δ_J / count for "mean"), and
multiplies by ∂ℓ/∂h (and ∂ℓ/∂y where torch differentiates the target too).

Every loss runs in float32 under autocast, as torch's autocast lists have it (policy FP32).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn import _reduction as _Reduction

from ._common import FP32, DeltaFunction, _cast, _named, above_bound, apply, autocast_dtype, check, check_compatible, \
    check_tensor, compiling, inplace_ok, scale_

_REDUCTIONS = ("none", "mean", "sum")
_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch's Reduction enum, for its loss kernels
_NLL_FORWARD = torch.ops.aten.nll_loss_forward.default  # (loss, total weight); the overload, resolved once


def _reduce(l, reduction):
    return l if reduction == "none" else l.sum() if reduction == "sum" else l.mean()


def _spread(g, n, reduction):
    """δ_ℓ from δ_J: the same δ for every term of a sum, δ/n for a mean of n terms ("batchmean": n is the
    batch size)."""
    return g / n if reduction == "mean" or reduction == "batchmean" else g


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


class MSE(_Elementwise):
    """ℓ = (h − y)²;  ∂ℓ/∂h = 2(h − y) = −∂ℓ/∂y."""

    @staticmethod
    def forward(h, y, reduction, w, p):
        return F.mse_loss(h, y, reduction=reduction)

    @staticmethod
    def dh(s, h, y, w, p):
        return scale_(h - y, 2 * s)


class L1(_Elementwise):
    """ℓ = |h − y|;  ∂ℓ/∂h = sign(h − y) (0 at h = y, as torch) = −∂ℓ/∂y."""

    @staticmethod
    def forward(h, y, reduction, w, p):
        return F.l1_loss(h, y, reduction=reduction)

    @staticmethod
    def dh(s, h, y, w, p):
        return scale_(torch.sign(h - y), s)


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


class Huber(_Elementwise):
    """d = h − y, δ_H = p:  ℓ = ½d² where |d| < δ_H, δ_H(|d| − ½δ_H) elsewhere;
    ∂ℓ/∂h = clamp(d, −δ_H, δ_H) (= −∂ℓ/∂y)."""

    @staticmethod
    def forward(h, y, reduction, w, delta):
        return F.huber_loss(h, y, reduction=reduction, delta=delta)

    @staticmethod
    def dh(s, h, y, w, delta):
        return scale_((h - y).clamp(-delta, delta), s)


_BCE_EPS = float(torch.tensor(1e-12, dtype=torch.float32))  # torch's EPSILON, a float32 constant



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
    wy = keep.to(dtype) if w is None else torch.where(keep, w[y0], 0)
    return keep, y0, wy


def _class_spread(g, wy, reduction, z):
    """δ_ℓ per target, shaped to broadcast along z's class dim ("mean" divides by Σ_n w_{y_n})."""
    s = g / wy.sum() if reduction == "mean" else g
    return s.unsqueeze(_class_dim(z)) if reduction == "none" else s


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
            delta = _ce_delta(g, logp, y, w, total, cd, eps, ctx.reduction, ctx.ignore_index)
        if g_logp is not None and ctx.needs_input_grad[0]:  # create_graph only: e^logp's δ, through log_softmax
            d = g_logp - torch.exp(logp) * g_logp.sum(cd, keepdim=True)
            delta = d if delta is None else delta + d
        return delta, None, None, None, None, None, None


def _ce_delta(g, logp, y, w, total, cd, eps, reduction, ignore_index):
    """δ_z = δ_ℓ·(p·Σq − q) (CrossEntropy's docstring), the softmax buffer p = e^logp updated in place when safe."""
    if w is None and not eps and reduction != "none":
        # no target ignored (torch counted them in forward; a free look on the CPU, where no transform
        # such as vmap is active, which inplace_ok also asks, and nothing is traced: .item() would break a
        # torch.compile graph): δ_z = p·s − s·onehot with s = δ_J (/N for "mean") read as a number (no graph
        # is recorded here), in place in as few distinct ops as it takes (inside a training step each costs
        # ~2-3 µs cold): p·s − s at the target is native's order (its nll δ −s, then log_softmax's δ).
        n = total.item() if total is not None and logp.device.type == "cpu" and inplace_ok() \
            and not compiling() else -1
        if n == y.numel() > 0:
            s = g.item() / n if reduction == "mean" else g.item()
            return torch.exp(logp).mul_(s).scatter_(cd, y.unsqueeze(cd), -s, reduce="add")
        keep = y != ignore_index
        s = g / (keep.sum() if total is None else total) if reduction == "mean" else g
        # δ_ℓn exactly 0 for an ignored target (which then points at class 0), as native never touches those
        # rows: a select, as δ_J/0 = inf for an all-ignored batch ("mean") and 0·inf = NaN
        r = torch.where(keep, s, 0).unsqueeze(cd)
        delta = scale_(torch.exp(logp), r)  # p·δ_ℓ − δ_ℓ at the target: native's order
        return _add_at(delta, cd, (y * keep).unsqueeze(cd), r.neg())
    C = logp.shape[cd]
    keep, y0, wy = _targets(y, w, ignore_index, logp.dtype)
    wy, keep, y0 = wy.unsqueeze(cd), keep.unsqueeze(cd), y0.unsqueeze(cd)
    s = torch.where(keep, _class_spread(g, wy, reduction, logp), 0)  # ignored rows: exactly 0 (see above)
    sum_q = (1 - eps) * wy + keep.to(logp.dtype) * (eps / C * (C if w is None else w.sum())) if eps else wy
    delta = scale_(torch.exp(logp), s * sum_q)
    delta = _add_at(delta, cd, y0, (-(1 - eps) * s * wy).expand(y0.shape))
    if eps:
        delta = delta - (eps / C) * (s if w is None else s * _class_view(w, logp))
    return delta


def _add_at(delta, cd, index, src):
    """delta[n, index[n]] += src[n] along the class dim, in place on backward's own buffer when safe."""
    return delta.scatter_add_(cd, index, src) if inplace_ok() else delta.scatter_add(cd, index, src)


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


# --- margin, embedding and likelihood losses ----------------------------------------------------------
# forward is torch's own forward kernel where it has one, else torch's composite written out step by step
# (its values; cosine and triplet keep their per-example statistics for backward); backward the formula.
# Inputs broadcast as torch lets them; each δ is summed back to its input's shape.

_EPSILON = 1e-12  # torch's EPSILON in cosine_embedding_loss


def _sum_to(t, like):
    return t if t.shape == like.shape else t.sum_to_size(like.shape)


def _n_terms(reduction, *tensors):
    """The count "mean" divides by: the number of terms ℓ of the broadcast inputs."""
    return math.prod(torch.broadcast_shapes(*(t.shape for t in tensors))) if reduction == "mean" else 1


class SoftMargin(DeltaFunction):
    """ℓ = log(1 + e^{−y·h});  ∂ℓ/∂h = −y·σ(−y·h).  torch does not differentiate y.
    (σ, not native's e^{−yh}/(1 + e^{−yh}): finite where e^{−yh} overflows and native's δ is NaN.)"""

    @staticmethod
    def forward(h, y, reduction):
        return torch._C._nn.soft_margin_loss(h, y, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.reduction = inputs
        ctx.n = _n_terms(ctx.reduction, h, y)
        ctx.save_for_backward(h, y)

    @staticmethod
    def backward(ctx, g):
        h, y = ctx.saved_tensors
        check(not ctx.needs_input_grad[1], "soft_margin_loss",
              "not differentiable with respect to target (neither is torch's); it cannot require grad")
        if not ctx.needs_input_grad[0]:
            return None, None, None
        s = _spread(g, ctx.n, ctx.reduction)
        return _sum_to(scale_(torch.sigmoid(-y * h), -y * s), h), None, None


class MultilabelSoftMargin(DeltaFunction):
    """Per example n over its C classes (the last dim):
    ℓ_n = (1/C)·Σ_c w_c·(−y_c log σ(h_c) − (1 − y_c) log σ(−h_c)) = (1/C)·Σ_c w_c·e_c,
    e_c = (1 − y_c)h_c + log(1 + e^{−h_c}) (the same value, computed stably);
      δ_h = δ_ℓn·(w/C) ⊙ (σ(h) − y)
      δ_y = −δ_ℓn·(w/C) ⊙ h             (log σ(h) − log σ(−h) = h)
      δ_w = Σ_(broadcast) δ_ℓn·e / C     (torch differentiates the weight too)
    """

    @staticmethod
    def forward(h, y, w, reduction):
        e = F.binary_cross_entropy_with_logits(h, y, w, reduction="none")
        return _reduce(e.sum(-1) / h.shape[-1], reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, w, ctx.reduction = inputs
        ctx.n = h.numel() // h.shape[-1] if h.shape[-1] else 0
        ctx.save_for_backward(h, y, w)

    @staticmethod
    def backward(ctx, g):
        h, y, w = ctx.saved_tensors
        need_h, need_y, need_w = ctx.needs_input_grad[:3]
        s = _spread(g, ctx.n, ctx.reduction) / h.shape[-1]
        if ctx.reduction == "none":
            s = s.unsqueeze(-1)
        sw = s if w is None else s * w
        gh = _sum_to(scale_(torch.sigmoid(h) - y, sw), h) if need_h else None
        gy = _sum_to(-h * sw, y) if need_y else None
        gw = _sum_to(F.binary_cross_entropy_with_logits(h, y, reduction="none") * s, w) if need_w else None
        return gh, gy, gw, None


class MarginRanking(DeltaFunction):
    """u = −y·(h1 − h2) + margin,  ℓ = max(0, u);  with a = ∂ℓ/∂u = [u > 0] (at u = 0 as native's
    clamp takes it, _common.above_bound):
    δ_h1 = −δ_ℓ·a·y,  δ_h2 = δ_ℓ·a·y,  δ_y = −δ_ℓ·a·(h1 − h2)."""

    @staticmethod
    def forward(h1, h2, y, margin, reduction):
        return torch.margin_ranking_loss(h1, h2, y, margin, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h1, h2, y, ctx.margin, ctx.reduction = inputs
        ctx.n = _n_terms(ctx.reduction, h1, h2, y)
        ctx.save_for_backward(h1, h2, y)

    @staticmethod
    def backward(ctx, g):
        h1, h2, y = ctx.saved_tensors
        need1, need2, need_y = ctx.needs_input_grad[:3]
        if not (need1 or need2 or need_y):
            return (None,) * 5
        d = h1 - h2
        s = _spread(g, ctx.n, ctx.reduction) * above_bound(ctx.margin - y * d)  # δ_ℓ·a
        sy = s * y if need1 or need2 else None
        return (_sum_to(-sy, h1) if need1 else None, _sum_to(sy, h2) if need2 else None,
                _sum_to(-s * d, y) if need_y else None, None, None)


class HingeEmbedding(DeltaFunction):
    """ℓ = [y ≠ −1]·h + [y ≠ 1]·max(0, margin − h)  (h where y = 1, max(0, margin − h) where y = −1,
    both elsewhere, as torch);  ∂ℓ/∂h = [y ≠ −1] − [y ≠ 1]·[margin − h > 0] (at 0 as native's clamp
    takes it).  torch does not differentiate y."""

    @staticmethod
    def forward(h, y, margin, reduction):
        return torch.hinge_embedding_loss(h, y, margin, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.margin, ctx.reduction = inputs
        ctx.n = _n_terms(ctx.reduction, h, y)
        ctx.save_for_backward(h, y)

    @staticmethod
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        h, y = ctx.saved_tensors
        s = _spread(g, ctx.n, ctx.reduction)
        d = (y != -1).to(h.dtype) - ((y != 1) & above_bound(ctx.margin - h)).to(h.dtype)
        return _sum_to(scale_(d, s), h), None, None, None


class CosineEmbedding(DeltaFunction):
    """Per example n (rows of 2-D inputs; a 1-D pair is one example), torch's formula:
    p = Σ x1 x2,  m_i = Σ x_i² + ε (ε = 1e-12),  D = √(m1 m2),  c = p / D;
    ℓ = 1 − c where y = 1, max(0, c − margin) where y = −1, 0 elsewhere.
    ∂ℓ/∂c = −[y = 1] + [y = −1]·[c > margin] (at c = margin as native's clamp takes it), and
    ∂c/∂x1 = x2/D − c·x1/m1,  ∂c/∂x2 = x1/D − c·x2/m2:
      δ_x1 = δ_ℓn·∂ℓ/∂c·(x2/D − c·x1/m1),  δ_x2 = δ_ℓn·∂ℓ/∂c·(x1/D − c·x2/m2).  y gets no δ (torch's
    neither)."""

    @staticmethod
    def forward(x1, x2, y, margin, reduction):
        # torch's composite, step by step (its values); c, D, m1, m2 per example are kept for backward
        c, D, m1, m2 = _cosine(x1, x2, y.dim())
        l = torch.where(y == 1, 1 - c, 0) + torch.where(y == -1, (c - margin).clamp_min(0), 0)
        return _reduce(l, reduction), c, D, m1, m2

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, y, ctx.margin, ctx.reduction = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.n = y.numel()
        ctx.save_for_backward(x1, x2, y, *output[1:])

    @staticmethod
    def backward(ctx, g, *_):
        x1, x2, y, c, D, m1, m2 = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        if not (need1 or need2):
            return (None,) * 5
        k = y.dim()
        if torch.is_grad_enabled():  # backward differentiated (create_graph): c, D, m as functions of x
            c, D, m1, m2 = _cosine(x1, x2, k)
        dc = ((y == -1) & above_bound(c, ctx.margin)).to(c.dtype) - (y == 1).to(c.dtype)
        t = _spread(g, ctx.n, ctx.reduction) * dc  # δ_ℓn·∂ℓ/∂c
        tD, tc = (t / D).unsqueeze(k), (t * c).unsqueeze(k)
        g1 = _sum_to(x2 * tD - x1 * (tc / m1.unsqueeze(k)), x1) if need1 else None
        g2 = _sum_to(x1 * tD - x2 * (tc / m2.unsqueeze(k)), x2) if need2 else None
        return g1, g2, None, None, None


def _cosine(x1, x2, k):
    """torch's c = p / D over dim k, with D = √(m1 m2), m_i = Σ x_i² + ε; returns c, D, m1, m2."""
    p = (x1 * x2).sum(k)
    m1 = (x1 * x1).sum(k) + _EPSILON
    m2 = (x2 * x2).sum(k) + _EPSILON
    D = (m1 * m2).sqrt()
    return p / D, D, m1, m2


def _norm_delta(x, D, G, p):
    """δ_x of D = ‖x‖_p over the last dim given δ_D = G (both keepdim), torch's norm backward
    case by case: 0 where D = 0 (p ≥ 1), sign(x) for p = 1, the ties shared for p = ∞.
    x must be a fresh temporary (p = 2 writes into it where in place is allowed)."""
    if p == 0:
        return torch.zeros_like(x)
    if p == 1:
        return x.sign() * G
    if p == 2:
        return scale_(x, (G / D).masked_fill(D == 0, 0))
    if p == float("inf") or p == -float("inf"):
        mask = (x.abs() == D) | x.isnan()
        return x.sign() * mask * (G / mask.sum(-1, keepdim=True))
    if p < 1:
        return x.sign() * x.abs().pow(p - 1).masked_fill(x == 0, 0) * G * D.pow(1 - p)
    scaled = x.sign() * x.abs().pow(p - 1) if p < 2 else x * x.abs().pow(p - 2)
    return scaled * (G / D.pow(p - 1)).masked_fill(D == 0, 0)


class TripletMargin(DeltaFunction):
    """Per example (last dim the features), torch's pairwise distance d(u, v) = ‖u − v + ε‖_p:
    d⁺ = d(a, p),  d⁻ = d(a, n), or with swap min(d(a, n), d(p, n)) (a tie shares δ half-half, as torch);
    ℓ = max(0, margin + d⁺ − d⁻),  b = [margin + d⁺ − d⁻ > 0] (at 0 as native's clamp takes it).
    With ∂‖v‖_p/∂v = sign(v)|v|^{p−1} / ‖v‖_p^{p−1} (torch's special cases at p ∈ {1, 2, ∞}, 0 at ‖v‖ = 0):
      δ_a = δ_ℓ·b·(∂d⁺/∂a − ∂d⁻/∂a),  δ_p = δ_ℓ·b·(∂d⁺/∂p − ∂d⁻/∂p),  δ_n = −δ_ℓ·b·∂d⁻/∂n.
    """

    @staticmethod
    def forward(a, p, n, margin, pn, eps, swap, reduction):
        # torch's composite, step by step (its values); the distances are kept for backward
        dp, dn, ds = _triplet_distances(a, p, n, pn, eps, swap)[3:]
        l = (margin + dp - (torch.minimum(dn, ds) if swap else dn)).clamp_min(0)
        return _reduce(l, reduction), dp, dn, ds

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, p, n, ctx.margin, ctx.p, ctx.eps, ctx.swap, ctx.reduction = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.n = output[1].numel()  # the examples: every dim but the last (the features)
        # a, p, n, not the differences (native's saved norm inputs): no new buffers kept for backward
        ctx.save_for_backward(a, p, n, *output[1:])

    @staticmethod
    def backward(ctx, g, *_):
        a, p, n, dp, dn, ds = ctx.saved_tensors
        need_a, need_p, need_n = ctx.needs_input_grad[:3]
        if not (need_a or need_p or need_n):
            return (None,) * 8
        pn, swap = ctx.p, ctx.swap
        xp, xn, xs, *d = _triplet_distances(a, p, n, pn, ctx.eps, swap, torch.is_grad_enabled())
        if d[0] is not None:  # backward differentiated (create_graph): the distances as functions of a, p, n
            dp, dn, ds = d
        dneg = torch.minimum(dn, ds) if swap else dn
        s = _spread(g, ctx.n, ctx.reduction) * above_bound(ctx.margin + dp - dneg)  # δ_ℓ·b
        gn = -s
        if swap:  # δ of min(dn, ds): to the smaller one, half each on a tie
            half = torch.where(dn == ds, gn / 2, gn)
            gn, gs = half.masked_fill(dn > ds, 0), half.masked_fill(dn < ds, 0)
        dxp = _norm_delta(xp, dp.unsqueeze(-1), s.unsqueeze(-1), pn)   # δ of a − p + ε
        dxn = _norm_delta(xn, dn.unsqueeze(-1), gn.unsqueeze(-1), pn)  # δ of a − n + ε
        dxs = _norm_delta(xs, ds.unsqueeze(-1), gs.unsqueeze(-1), pn) if swap else None  # of p − n + ε
        ga = _sum_to(dxp + dxn, a) if need_a else None
        if inplace_ok():  # dxn, dxs, dxp are fresh: update them in place (each new CPU buffer page-faults)
            gn = (dxn.add_(dxs).neg_() if swap else dxn.neg_()) if need_n else None
            gp = (dxs.sub_(dxp) if swap else dxp.neg_()) if need_p else None
        else:
            gn = (-dxn if dxs is None else -dxn - dxs) if need_n else None
            gp = (-dxp if dxs is None else dxs - dxp) if need_p else None
        return (ga, None if gp is None else _sum_to(gp, p), None if gn is None else _sum_to(gn, n),
                None, None, None, None, None)


def _triplet_distances(a, p, n, pn, eps, swap, norms=True):
    """x⁺ = a − p + ε, x⁻ = a − n + ε, xˢ = p − n + ε (swap) and, with ``norms``, their p-norms over the
    last dim (torch's pairwise_distance); absent ones empty (xˢ, dˢ) or None (norms)."""
    if torch.is_grad_enabled():
        xp, xn, xs = a - p + eps, a - n + eps, (p - n + eps if swap else None)
    else:  # fresh temporaries: in place is safe
        xp, xn, xs = (a - p).add_(eps), (a - n).add_(eps), ((p - n).add_(eps) if swap else None)
    if not norms:
        return xp, xn, xs, None, None, None
    dp, dn = torch.linalg.vector_norm(xp, pn, -1), torch.linalg.vector_norm(xn, pn, -1)
    ds = torch.linalg.vector_norm(xs, pn, -1) if swap else dn.new_empty(0)
    return xp, xn, xs, dp, dn, ds


class PoissonNLL(DeltaFunction):
    """Rate λ given as log λ = h (log_input) or as λ = h:
    log_input: ℓ = eʰ − y·h;             ∂ℓ/∂h = eʰ − y,           ∂ℓ/∂y = −h
    else:      ℓ = h − y·log(h + eps);   ∂ℓ/∂h = 1 − y/(h + eps),  ∂ℓ/∂y = −log(h + eps)
    full adds Stirling's y log y − y + ½ log(2πy) where y > 1:  ∂/∂y = log y + 1/(2y) there, 0 where
    0 < y ≤ 1, NaN where y ≤ 0 (native's 0·log y there)."""

    @staticmethod
    def forward(h, y, log_input, full, eps, reduction):
        return torch.poisson_nll_loss(h, y, log_input, full, eps, _ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, ctx.log_input, ctx.full, ctx.eps, ctx.reduction = inputs
        ctx.n = _n_terms(ctx.reduction, h, y)
        ctx.save_for_backward(h, y)

    @staticmethod
    def backward(ctx, g):
        h, y = ctx.saved_tensors
        need_h, need_y = ctx.needs_input_grad[:2]
        s = _spread(g, ctx.n, ctx.reduction)
        gh = gy = None
        if need_h:
            gh = _sum_to(scale_(h.exp() - y if ctx.log_input else 1 - y / (h + ctx.eps), s), h)
        if need_y:
            dy = -h if ctx.log_input else -torch.log(h + ctx.eps)
            if ctx.full:
                # × [y > 1]: 0 where 0 < y ≤ 1, NaN where y ≤ 0 (log y + 1/(2y) is NaN there), as native
                dy = dy + (y.log() + 0.5 / y) * (y > 1)
            gy = _sum_to(scale_(dy, s), y)
        return gh, gy, None, None, None, None


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GaussianNLL(DeltaFunction):
    """Mean h, variance v = max(var, eps) (the clamp is invisible to torch's autograd: var's δ is
    the formula at the clamped v, not 0), d = h − y:
    ℓ = ½(log v + d²/v) (+ ½ log 2π when full);
      ∂ℓ/∂h = d/v = −∂ℓ/∂y,   ∂ℓ/∂var = ½(1/v − d²/v²)."""

    @staticmethod
    def forward(h, y, var, full, eps, reduction):
        v = var.clamp_min(eps)
        l = 0.5 * (torch.log(v) + (h - y) ** 2 / v)
        return _reduce(l + _HALF_LOG_2PI if full else l, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, y, var, _, ctx.eps, ctx.reduction = inputs
        ctx.n = _n_terms(ctx.reduction, h, y, var)
        ctx.save_for_backward(h, y, var)

    @staticmethod
    def backward(ctx, g):
        h, y, var = ctx.saved_tensors
        need_h, need_y, need_v = ctx.needs_input_grad[:3]
        if not (need_h or need_y or need_v):
            return (None,) * 6
        s = _spread(g, ctx.n, ctx.reduction)
        v = var.clamp_min(ctx.eps)
        q = (h - y) / v
        sq = q * s if need_h or need_y else None
        gv = _sum_to(0.5 * s * (1 / v - q * q), var) if need_v else None
        return (_sum_to(sq, h) if need_h else None, _sum_to(-sq, y) if need_y else None, gv, None, None, None)


# --- functional forms, with torch.nn.functional's signatures ------------------------------------------

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
    if isinstance(t0, torch.Tensor):  # the common case, one dtype: nothing to promote (~3 µs less)
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


def _broadcast_pair(op, input, target):
    """What torch's mse/l1/smooth_l1/huber do: warn when the sizes differ, then broadcast."""
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)
        try:
            return torch.broadcast_tensors(input, target)
        except RuntimeError:
            check(False, op, f"target of shape {list(target.shape)} does not broadcast with input of "
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
        check(False, op, f"input of shape {list(input.shape)} and target of shape {list(target.shape)} must match")
    return HalfSquaredError.apply(input, target, reduction, dtype)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _reduction("mse_loss", reduction, size_average, reduce)
    return _pointwise("mse_loss", MSE, input, target, reduction, weight=weight)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _reduction("l1_loss", reduction, size_average, reduce)
    return _pointwise("l1_loss", L1, input, target, reduction, weight=weight)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    reduction = _reduction("smooth_l1_loss", reduction, size_average, reduce)
    check(beta >= 0, "smooth_l1_loss", f"beta must be >= 0, got {beta}")
    if beta == 0:  # torch's own special case; also keeps d/β out of the formula
        return _pointwise("smooth_l1_loss", L1, input, target, reduction)
    return _pointwise("smooth_l1_loss", SmoothL1, input, target, reduction, float(beta))


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    reduction = _reduction("huber_loss", reduction)
    check(delta > 0, "huber_loss", f"delta must be > 0, got {delta}")
    return _pointwise("huber_loss", Huber, input, target, reduction, float(delta), weight, False)


def _check_weights_broadcast(op, input, **tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        try:
            ok = torch.broadcast_shapes(input.shape, t.shape) == input.shape
        except RuntimeError:
            ok = False
        check(ok, op, f"{name} of shape {list(t.shape)} does not broadcast to input's shape {list(input.shape)}")


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    op = "binary_cross_entropy"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight = _promote(op, input=input, target=target, weight=weight)
    check(target.shape == input.shape, op,
          f"target of shape {list(target.shape)} must have input's shape {list(input.shape)}")
    _check_weights_broadcast(op, input, weight=weight)
    with _named(op):
        return apply(BCE, FP32, input, target, reduction, weight, None)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    op = "binary_cross_entropy_with_logits"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight, pos_weight = _promote(op, input=input, target=target, weight=weight, pos_weight=pos_weight)
    check(target.shape == input.shape, op,
          f"target of shape {list(target.shape)} must have input's shape {list(input.shape)}")
    _check_weights_broadcast(op, input, weight=weight, pos_weight=pos_weight)
    return apply(BCEWithLogits, FP32, input, target, reduction, weight, pos_weight)


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


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    op = "nll_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    _check_class_input(op, input, target, weight)
    check_compatible(op, input=input, weight=weight)
    target = _check_index_target(op, input, target, ignore_index)
    check(target.device == input.device, op, f"target is on {target.device} but input is on {input.device}")
    with _named(op):
        return apply(NLL, FP32, input, target, weight, reduction, int(ignore_index))


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
            check(False, op, f"target of shape {list(target.shape)} does not broadcast with input of "
                             f"shape {list(input.shape)}")
    return apply(KLDiv, FP32, input, target, reduction, None, bool(log_target))


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    op = "cross_entropy"
    # the common call (class indices (N,), logits (N, C), no weights or smoothing) in one guard: inside a
    # training step the checks below cost far more than warm (measured on mlp-small's bf16 step: ~25 µs
    # over calling the Function directly, ~10 with the guard); anything else, or any doubt, takes them
    if weight is None and not label_smoothing and size_average is None and reduce is None \
            and (reduction == "mean" or reduction == "sum") and type(input) is torch.Tensor \
            and type(target) is torch.Tensor and input.dim() == 2 and target.dim() == 1 \
            and target.dtype == torch.long and input.is_floating_point() and target.device == input.device \
            and target.shape[0] == input.shape[0]:
        with _named(op):
            return CrossEntropy.apply(input, target, None, reduction, int(ignore_index), 0.0,
                                      autocast_dtype(FP32, (input,)))[0]
    reduction = _reduction(op, reduction, size_average, reduce)
    _check_class_input(op, input, target, weight)
    check(0.0 <= label_smoothing <= 1.0, op, f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    eps = float(label_smoothing)
    if target.shape == input.shape:  # class probabilities (torch decides by shape, too)
        check(target.is_floating_point(), op,
              f"a target with input's shape holds class probabilities and must be floating point, got {target.dtype}")
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


def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    op = "soft_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    if isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor) and target.dtype != input.dtype \
            and input.is_floating_point():  # torch's kernel computes in input's dtype (y gets no δ)
        target = target.to(input.dtype)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(SoftMargin, FP32, input, target, reduction)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    op = "multilabel_soft_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight = _promote(op, input=input, target=target, weight=weight)
    check(input.dim() >= 1, op, "input must have at least one dimension (the classes, last)")
    _check_weights_broadcast(op, input, target=target, weight=weight)
    if target.shape != input.shape:  # torch broadcasts y silently; the expand's backward sums δ_y back
        target = target.expand(input.shape)
    return apply(MultilabelSoftMargin, FP32, input, target, weight, reduction)


def margin_ranking_loss(input1, input2, target, margin=0, size_average=None, reduce=None, reduction="mean"):
    op = "margin_ranking_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input1, input2, target = _promote(op, input1=input1, input2=input2, target=target)
    check(input1.dim() == input2.dim() == target.dim(), op,
          f"input1, input2 and target must have the same number of dimensions, got shapes "
          f"{list(input1.shape)}, {list(input2.shape)} and {list(target.shape)}")
    with _named(op):
        return apply(MarginRanking, FP32, input1, input2, target, float(margin), reduction)


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None, reduction="mean"):
    op = "hinge_embedding_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(HingeEmbedding, FP32, input, target, float(margin), reduction)


def cosine_embedding_loss(input1, input2, target, margin=0, size_average=None, reduce=None, reduction="mean"):
    op = "cosine_embedding_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input1, input2, target = _promote(op, input1=input1, input2=input2, target=target)
    t = target.dim()
    check(t <= 1, op, "0D or 1D target tensor expected, multi-target not supported")
    check(input1.dim() == input2.dim() == t + 1, op,
          f"{t}D target tensor expects {t + 1}D input tensors, but found inputs with sizes "
          f"{list(input1.shape)} and {list(input2.shape)}")
    with _named(op):
        return apply(CosineEmbedding, FP32, input1, input2, target, float(margin), reduction)[0]


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None,
                     reduction="mean"):
    op = "poisson_nll_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(PoissonNLL, FP32, input, target, bool(log_input), bool(full), float(eps), reduction)


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    op = "gaussian_nll_loss"
    if isinstance(var, (int, float)) and not isinstance(var, bool):  # one variance for all: no δ
        if var < 0:
            raise ValueError(f"torchbp.functional.{op}: var has negative entry/entries")
        check_tensor(op, "input", input)
        var = torch.full((), float(var), dtype=input.dtype, device=input.device)
    else:
        check_tensor(op, "var", var)
        if torch.any(var < 0):  # torch's check (a host sync, as native's)
            raise ValueError(f"torchbp.functional.{op}: var has negative entry/entries")
        if var.shape != input.shape:
            # torch's homoscedastic cases: var one dim short of input, or one mismatched dim where var has 1
            if input.shape[:-1] == var.shape:
                var = var.unsqueeze(-1)
            elif not (input.dim() == var.dim()
                      and sum(b for a, b in zip(input.shape, var.shape) if a != b) == 1):
                raise ValueError(f"torchbp.functional.{op}: var of shape {list(var.shape)} is of incorrect size "
                                 f"for input of shape {list(input.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"torchbp.functional.{op}: {reduction!r} is not a valid value for reduction "
                         f"(use 'none', 'mean' or 'sum')")
    input, target, var = _promote(op, input=input, target=target, var=var)
    with _named(op):
        return apply(GaussianNLL, FP32, input, target, var, bool(full), float(eps), reduction)


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False, size_average=None,
                        reduce=None, reduction="mean"):
    op = "triplet_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    if margin <= 0:
        raise ValueError(f"torchbp.functional.{op}: margin must be greater than 0, got {margin}")
    anchor, positive, negative = _promote(op, anchor=anchor, positive=positive, negative=negative)
    check(anchor.dim() == positive.dim() == negative.dim(), op,
          f"anchor, positive and negative must have the same number of dimensions, got {anchor.dim()}D, "
          f"{positive.dim()}D and {negative.dim()}D")
    with _named(op):
        return apply(TripletMargin, FP32, anchor, positive, negative, float(margin), float(p), float(eps),
                     bool(swap), reduction)[0]


ROUTES = {
    F.mse_loss: mse_loss, F.l1_loss: l1_loss, F.smooth_l1_loss: smooth_l1_loss, F.huber_loss: huber_loss,
    F.cross_entropy: cross_entropy, F.nll_loss: nll_loss, F.binary_cross_entropy: binary_cross_entropy,
    F.kl_div: kl_div,
    F.binary_cross_entropy_with_logits: binary_cross_entropy_with_logits,
    F.soft_margin_loss: soft_margin_loss, F.multilabel_soft_margin_loss: multilabel_soft_margin_loss,
    F.margin_ranking_loss: margin_ranking_loss, F.hinge_embedding_loss: hinge_embedding_loss,
    F.cosine_embedding_loss: cosine_embedding_loss, F.poisson_nll_loss: poisson_nll_loss,
    F.gaussian_nll_loss: gaussian_nll_loss, F.triplet_margin_loss: triplet_margin_loss,
}

__all__ = ["half_squared_error", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "cross_entropy",
           "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "soft_margin_loss",
           "multilabel_soft_margin_loss", "margin_ranking_loss", "hinge_embedding_loss", "cosine_embedding_loss",
           "poisson_nll_loss", "gaussian_nll_loss", "triplet_margin_loss"]
