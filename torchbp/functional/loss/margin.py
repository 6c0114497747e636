"""Margin and embedding losses: soft margin, multilabel soft margin, margin ranking, hinge embedding, cosine
embedding, triplet margin; the class margins multi_margin and multilabel_margin; and
triplet_margin_with_distance over the user's distances.

forward is torch's own forward kernel where it has one (its values and input checks), else torch's composite
written out step by step (its values; cosine and triplet keep their per-example statistics for backward);
backward the formula. Inputs broadcast as torch lets them; each δ is summed back to its input's shape.
The hinge's derivative is [u > 0] in the class margins (native's kernels) and elsewhere native's clamp's at
u = 0 (``above_bound``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import FP32, DeltaFunction, _named, above_bound, apply, check, check_tensor, inplace_ok, scale_, \
    unbroadcast
from ..fastpath import loss as _fast
from ._shared import _ENUM, _check_weights_broadcast, _n_terms, _promote, _reduce, _reduction, _spread


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
        return unbroadcast(scale_(torch.sigmoid(-y * h), -y * s), h.shape), None, None


def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    op = "soft_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    if isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor) and target.dtype != input.dtype \
            and input.is_floating_point():  # torch's kernel computes in input's dtype (y gets no δ)
        target = target.to(input.dtype)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(SoftMargin, FP32, input, target, reduction)


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
        gh = unbroadcast(scale_(torch.sigmoid(h) - y, sw), h.shape) if need_h else None
        gy = unbroadcast(-h * sw, y.shape) if need_y else None
        gw = unbroadcast(F.binary_cross_entropy_with_logits(h, y, reduction="none") * s, w.shape) \
            if need_w else None
        return gh, gy, gw, None


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    op = "multilabel_soft_margin_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target, weight = _promote(op, input=input, target=target, weight=weight)
    check(input.dim() >= 1, op, "input must have at least one dimension (the classes, last)")
    _check_weights_broadcast(op, input, target=target, weight=weight)
    if target.shape != input.shape:  # torch broadcasts y silently; the expand's backward sums δ_y back
        target = target.expand(input.shape)
    return apply(MultilabelSoftMargin, FP32, input, target, weight, reduction)


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
        return (unbroadcast(-sy, h1.shape) if need1 else None, unbroadcast(sy, h2.shape) if need2 else None,
                unbroadcast(-s * d, y.shape) if need_y else None, None, None)


def margin_ranking_loss(input1, input2, target, margin=0, size_average=None, reduce=None, reduction="mean"):
    op = "margin_ranking_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input1, input2, target = _promote(op, input1=input1, input2=input2, target=target)
    check(input1.dim() == input2.dim() == target.dim(), op,
          f"input1, input2 and target must have the same number of dimensions, got shapes "
          f"{list(input1.shape)}, {list(input2.shape)} and {list(target.shape)}")
    with _named(op):
        return apply(MarginRanking, FP32, input1, input2, target, float(margin), reduction)


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
        return unbroadcast(scale_(d, s), h.shape), None, None, None


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None, reduction="mean"):
    op = "hinge_embedding_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(HingeEmbedding, FP32, input, target, float(margin), reduction)


# --- cosine embedding ---------------------------------------------------------------------------------

_EPSILON = 1e-12  # torch's EPSILON in cosine_embedding_loss


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
        g1 = unbroadcast(x2 * tD - x1 * (tc / m1.unsqueeze(k)), x1.shape) if need1 else None
        g2 = unbroadcast(x1 * tD - x2 * (tc / m2.unsqueeze(k)), x2.shape) if need2 else None
        return g1, g2, None, None, None


def _cosine(x1, x2, k):
    """torch's c = p / D over dim k, with D = √(m1 m2), m_i = Σ x_i² + ε; returns c, D, m1, m2."""
    p = (x1 * x2).sum(k)
    m1 = (x1 * x1).sum(k) + _EPSILON
    m2 = (x2 * x2).sum(k) + _EPSILON
    D = (m1 * m2).sqrt()
    return p / D, D, m1, m2


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


# --- triplet margin over p-norm distances --------------------------------------------------------------

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
        ga = unbroadcast(dxp + dxn, a.shape) if need_a else None
        pn_deltas = _fast.triplet_pn_deltas_in_place if inplace_ok() else triplet_pn_deltas
        gp, gn = pn_deltas(dxp, dxn, dxs, need_p, need_n)
        return (ga, None if gp is None else unbroadcast(gp, p.shape),
                None if gn is None else unbroadcast(gn, n.shape), None, None, None, None, None)


def triplet_pn_deltas(dxp, dxn, dxs, need_p, need_n):
    """TripletMargin's δ_p = dxˢ − dx⁺ and δ_n = −dx⁻ − dxˢ from the δs of x⁺ = a − p + ε, x⁻ = a − n + ε and
    xˢ = p − n + ε (dxˢ None without swap: δ_p = −dx⁺, δ_n = −dx⁻); None where not needed.
    ``fastpath.loss.triplet_pn_deltas_in_place`` computes the same into the buffers given."""
    gp = (-dxp if dxs is None else dxs - dxp) if need_p else None
    gn = (-dxn if dxs is None else -dxn - dxs) if need_n else None
    return gp, gn


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


# --- margins over classes -------------------------------------------------------------------------------

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


# --- triplet margin over the user's distances ----------------------------------------------------------

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
        return _reduce(torch.clamp_min(margin + dp - dmin, 0), reduction)

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
        from ..distance import pairwise_distance as distance_function
    dp = distance_function(anchor, positive)
    dn = distance_function(anchor, negative)
    ds = distance_function(positive, negative) if swap else None
    return TripletHinge.apply(dp, dn, ds, float(margin), reduction)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.soft_margin_loss: soft_margin_loss, F.multilabel_soft_margin_loss: multilabel_soft_margin_loss,
          F.margin_ranking_loss: margin_ranking_loss, F.hinge_embedding_loss: hinge_embedding_loss,
          F.cosine_embedding_loss: cosine_embedding_loss, F.triplet_margin_loss: triplet_margin_loss,
          F.multi_margin_loss: multi_margin_loss, F.multilabel_margin_loss: multilabel_margin_loss,
          F.triplet_margin_with_distance_loss: triplet_margin_with_distance_loss}

__all__ = ["soft_margin_loss", "multilabel_soft_margin_loss", "margin_ranking_loss", "hinge_embedding_loss",
           "cosine_embedding_loss", "triplet_margin_loss", "multi_margin_loss", "multilabel_margin_loss",
           "triplet_margin_with_distance_loss"]
