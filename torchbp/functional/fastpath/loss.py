"""Faster forms of the loss family's formulas (``functional/loss/``).

- ``cross_entropy_call_is_common``: the common cross_entropy call recognised in one guard, so that it may skip
  the argument checks of ``loss.classification.cross_entropy`` (all of which it passes).
- ``cross_entropy_delta_unweighted``: the cross-entropy δ without class weights or label smoothing, reduced,
  written into backward's own buffer; ``loss.classification.cross_entropy_delta`` is the plain formula.
- ``add_at``: a scatter-add along the class dim, into backward's own buffer where that is safe.
- ``triplet_pn_deltas_in_place``: triplet_margin_loss's δ_p and δ_n written into backward's own buffers;
  ``loss.margin.triplet_pn_deltas`` is the plain formula.
"""
from __future__ import annotations

import torch

from .._common import compiling, inplace_ok, scale_


def cross_entropy_call_is_common(input, target, weight, size_average, reduce, reduction, label_smoothing) -> bool:
    """Whether ``cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
    label_smoothing)`` is the common training call: logits (N, C) of a floating dtype and int64 class indices
    (N,) on the same device, no class weights, no label smoothing, no legacy arguments, reduction "mean" or
    "sum". Every argument check of ``loss.classification.cross_entropy`` passes for such a call and changes
    nothing, so it may skip them; inside a training step they cost more than the guard. Anything else, or any
    doubt (a tensor subclass), answers False and takes the checks."""
    return weight is None and not label_smoothing and size_average is None and reduce is None \
        and (reduction == "mean" or reduction == "sum") and type(input) is torch.Tensor \
        and type(target) is torch.Tensor and input.dim() == 2 and target.dim() == 1 \
        and target.dtype == torch.long and input.is_floating_point() and target.device == input.device \
        and target.shape[0] == input.shape[0]


def add_at(delta, cd, index, src):
    """``delta.scatter_add(cd, index, src)`` (delta[n, index[n]] += src[n] along the class dim), written into
    ``delta`` where ``inplace_ok``: delta must be backward's own fresh buffer."""
    return delta.scatter_add_(cd, index, src) if inplace_ok() else delta.scatter_add(cd, index, src)


def cross_entropy_delta_applies(w, eps, reduction) -> bool:
    """Whether ``cross_entropy_delta_unweighted`` computes CrossEntropy's δ for these arguments: no class
    weights, no label smoothing, reduction "mean" or "sum"."""
    return w is None and not eps and reduction != "none"


def cross_entropy_delta_unweighted(g, logp, y, total, reduction, ignore_index):
    """``loss.classification.cross_entropy_delta(g, logp, y, None, 0.0, reduction, ignore_index)`` for
    reduction "mean" or "sum": δ_z = s·(p − onehot(y)), p = e^logp, with s = δ_J (÷ the number of targets not
    ignored for "mean"), rows of ignored targets exactly 0. ``total`` is that number as CrossEntropy's forward
    got it from torch's kernel (None where the kernel does not return it, N-D inputs).

    Where no target is ignored (``total`` equals the number of targets) s is read as a number and
    p·s − s·onehot written into the buffer p in two in-place ops. Reading ``total`` and δ_J with ``.item()``
    is done only on the CPU (elsewhere a device sync), only where ``inplace_ok`` (no graph recorded, no
    torch.func transform such as vmap, whose batched δ_J has no single value) and not while torch.compile
    traces (``.item()`` breaks its graph). Otherwise the keep mask takes the weights' place, in place where
    ``inplace_ok``. Both subtract s at the target after scaling p, native's order (its nll δ −s, then
    log_softmax's δ).
    """
    cd = 0 if logp.dim() == 1 else 1
    n = total.item() if total is not None and logp.device.type == "cpu" and inplace_ok() \
        and not compiling() else -1
    if n == y.numel() > 0:
        s = g.item() / n if reduction == "mean" else g.item()
        return torch.exp(logp).mul_(s).scatter_(cd, y.unsqueeze(cd), -s, reduce="add")
    keep = y != ignore_index
    s = g / (keep.sum() if total is None else total) if reduction == "mean" else g
    # a select, not a product: δ_J / 0 = inf for an all-ignored "mean", and 0·inf = NaN
    r = torch.where(keep, s, 0).unsqueeze(cd)
    return add_at(scale_(torch.exp(logp), r), cd, (y * keep).unsqueeze(cd), r.neg())


def triplet_pn_deltas_in_place(dxp, dxn, dxs, need_p, need_n):
    """``loss.margin.triplet_pn_deltas(dxp, dxn, dxs, need_p, need_n)`` (δ_p = dxˢ − dx⁺, δ_n = −(dx⁻ + dxˢ);
    −dx⁺ and −dx⁻ without swap) written into the buffers given, which it consumes: backward's own fresh
    temporaries, so that a first-order backward allocates no new buffer for δ_p and δ_n (a new buffer's
    pages are faulted in on first touch). Only where ``inplace_ok``."""
    gn = (dxn.neg_() if dxs is None else dxn.add_(dxs).neg_()) if need_n else None  # before dxs is overwritten
    gp = (dxp.neg_() if dxs is None else dxs.sub_(dxp)) if need_p else None
    return gp, gn
