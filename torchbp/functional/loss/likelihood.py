"""Negative log-likelihoods: Poisson, Gaussian, and connectionist temporal classification (ctc_loss).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._common import FP32, DeltaFunction, _named, apply, check, check_tensor, scale_, unbroadcast
from ._shared import _ENUM, _REDUCTIONS, _n_terms, _promote, _reduce, _reduction, _spread


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
            gh = unbroadcast(scale_(h.exp() - y if ctx.log_input else 1 - y / (h + ctx.eps), s), h.shape)
        if need_y:
            dy = -h if ctx.log_input else -torch.log(h + ctx.eps)
            if ctx.full:
                # × [y > 1]: 0 where 0 < y ≤ 1, NaN where y ≤ 0 (log y + 1/(2y) is NaN there), as native
                dy = dy + (y.log() + 0.5 / y) * (y > 1)
            gy = unbroadcast(scale_(dy, s), y.shape)
        return gh, gy, None, None, None, None


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None,
                     reduction="mean"):
    op = "poisson_nll_loss"
    reduction = _reduction(op, reduction, size_average, reduce)
    input, target = _promote(op, input=input, target=target)
    with _named(op):
        return apply(PoissonNLL, FP32, input, target, bool(log_input), bool(full), float(eps), reduction)


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
        gv = unbroadcast(0.5 * s * (1 / v - q * q), var.shape) if need_v else None
        return (unbroadcast(sq, h.shape) if need_h else None, unbroadcast(-sq, y.shape) if need_y else None, gv,
                None, None, None)


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


# --- connectionist temporal classification (nn.CTCLoss): the forward-backward recursions written out ----
# For one sample, the targets l_1 … l_S are extended with blanks, l' = (b, l_1, b, l_2, …, l_S, b), and a path
# may stay on a symbol, step to the next, or skip a blank between two different labels. With y_t(k) = exp(lp_t(k)):
#   α_t(s) = (α_{t−1}(s) + α_{t−1}(s−1) + [skip ok] α_{t−1}(s−2)) · y_t(l'_s),   α_0 from s = 0, 1
#   β_t(s) = (β_{t+1}(s) + β_{t+1}(s+1) + [skip ok] β_{t+1}(s+2)) · y_t(l'_s),   β_{T−1} from s = |l'|−1, |l'|−2
#   p = α_{T−1}(|l'|−1) + α_{T−1}(|l'|−2),   ℓ = −log p.
# All in log space (log-sum-exp), over the batch at once; the time steps are a Python loop.

_NEG = float("-inf")


def _lse(*ts):
    return torch.logsumexp(torch.stack(ts), 0)


def _shift(a, k):
    """a[..., s − k] (−∞ where s < k); k < 0 shifts the other way."""
    pad = a.new_full((*a.shape[:-1], abs(k)), _NEG)
    return torch.cat([pad, a[..., :-k]], -1) if k > 0 else torch.cat([a[..., -k:], pad], -1)


def _padded(targets, target_lengths, N):
    if targets.dim() == 2:
        return targets
    S = max(int(target_lengths.max()), 1) if N else 1
    out = targets.new_zeros(N, S)
    start = 0
    for n, L in enumerate(target_lengths.tolist()):
        out[n, :L] = targets[start:start + L]
        start += L
    return out


class CTC(DeltaFunction):
    """ℓ_n = −log p_n (module doc), reduced as torch does ("mean": ℓ_n / max(S_n, 1), then the batch mean).

    backward, as torch gives it (the δ at the logits of the log_softmax that makes lp, which is what a log-prob
    input means):  δ lp_t(k) = δ_ℓn · (y_t(k) − Σ_{s : l'_s = k} α_t(s) β_t(s) / (p_n y_t(k)))  for t < T_n, 0 after;
    0 for an infinite ℓ_n under zero_infinity.
    """

    @staticmethod
    def forward(lp, targets, input_lengths, target_lengths, blank, reduction, zero_infinity):
        return torch.ctc_loss(lp, targets, input_lengths, target_lengths, blank, _ENUM[reduction], zero_infinity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        lp, targets, il, tl, ctx.blank, ctx.reduction, ctx.zero_infinity = inputs
        ctx.save_for_backward(lp, targets, il, tl)

    @staticmethod
    def backward(ctx, g):
        lp, targets, il, tl = ctx.saved_tensors
        T, N, C = lp.shape
        lab = _padded(targets, tl, N).long()
        S = lab.shape[1]
        ext = lab.new_full((N, 2 * S + 1), ctx.blank)
        ext[:, 1::2] = lab
        Lx = 2 * tl + 1  # each sample's |l'|
        s_idx = torch.arange(2 * S + 1, device=lp.device)
        valid = s_idx < Lx[:, None]
        prev2 = torch.cat([ext.new_full((N, 2), -1), ext[:, :-2]], 1)  # l'_{s−2}
        skip = (s_idx % 2 == 1) & (ext != prev2)  # s may be reached from s − 2 (a label after a different one)
        skip_next = torch.cat([skip[:, 2:], torch.zeros_like(skip[:, :2])], 1)  # s + 2 may be reached from s
        neg = lp.new_full((), _NEG)
        emit = torch.where(valid, lp.gather(2, ext.unsqueeze(0).expand(T, -1, -1)), neg)  # (T, N, 2S+1)
        alphas, a = [], torch.where(s_idx < 2, emit[0], neg)
        alphas.append(a)
        for t in range(1, T):
            a = _lse(a, _shift(a, 1), torch.where(skip, _shift(a, 2), neg)) + emit[t]
            alphas.append(a)
        alpha = torch.stack(alphas)
        last = (il - 1).clamp(min=0)
        aT = alpha[last, torch.arange(N, device=lp.device)]  # (N, 2S+1) at each sample's last step
        ends = (s_idx == (Lx - 1)[:, None]) | (s_idx == (Lx - 2)[:, None])
        logp = torch.logsumexp(torch.where(ends, aT, neg), 1)  # log p_n
        betas, b = [None] * T, lp.new_full((N, 2 * S + 1), _NEG)
        for t in range(T - 1, -1, -1):
            b = _lse(b, _shift(b, -1), torch.where(skip_next, _shift(b, -2), neg)) + emit[t]
            b = torch.where((t == last)[:, None], torch.where(ends, emit[t], neg), b)
            b = torch.where((t > last)[:, None], neg, b)
            betas[t] = b
        beta = torch.stack(betas)
        # Σ_{s : l'_s = k} α_t(s) β_t(s) / (p y_t(k)), gathered into the classes k
        w = torch.exp(alpha + beta - logp[None, :, None] - emit).nan_to_num(0.0)
        gamma = lp.new_zeros(T, N, C).scatter_add(2, ext.unsqueeze(0).expand(T, -1, -1), w)
        grad = lp.exp() - gamma
        alive = torch.arange(T, device=lp.device)[:, None] < il[None, :]
        grad = torch.where(alive[:, :, None], grad, torch.zeros_like(grad))
        if ctx.zero_infinity:
            grad = torch.where(torch.isinf(logp)[None, :, None], torch.zeros_like(grad), grad)
        if ctx.reduction == "mean":
            scale = g / (N * tl.clamp(min=1).to(lp.dtype))
        elif ctx.reduction == "sum":
            scale = g.expand(N)
        else:
            scale = g
        return grad * scale[None, :, None], None, None, None, None, None, None


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    """δ twin of ``torch.nn.functional.ctc_loss`` ((T, N, C) log-probs; unbatched (T, C) too)."""
    op = "ctc_loss"
    reduction = _reduction(op, reduction)
    check_tensor(op, "log_probs", log_probs)
    check(log_probs.is_floating_point(), op, f"log_probs must be floating point, got {log_probs.dtype}")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs, targets = log_probs.unsqueeze(1), targets.unsqueeze(0) if targets.dim() == 1 else targets
    check(log_probs.dim() == 3, op, f"expected (T, N, C) log_probs, got shape {list(log_probs.shape)}")
    N, dev = log_probs.shape[1], log_probs.device
    il = torch.as_tensor(input_lengths, dtype=torch.long, device=dev).reshape(N)
    tl = torch.as_tensor(target_lengths, dtype=torch.long, device=dev).reshape(N)
    out = CTC.apply(log_probs, targets.to(dev), il, tl, int(blank), reduction, bool(zero_infinity))
    return out.squeeze(0) if unbatched and reduction == "none" else out


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.poisson_nll_loss: poisson_nll_loss, F.gaussian_nll_loss: gaussian_nll_loss, F.ctc_loss: ctc_loss}

__all__ = ["poisson_nll_loss", "gaussian_nll_loss", "ctc_loss"]
