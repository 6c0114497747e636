"""Normalization's backward in place: the formula of ``normalization._plain`` expanded so that every small
factor is folded first and the full-size work is one temporary P = δ ⊙ (x − μ), a few sums over P and δ,
and δ_x built in P's buffer by in-place ops: the passes over the data and the allocations that make the plain
form slower than native's fused kernel. Used where no graph is recorded and no vmap is active
(``in_place_ok``); ``tests/test_fastpath_norm.py`` holds both against ``_plain``.
"""
from __future__ import annotations

import math

import torch

from .._common import compiling

_LOW = (torch.float16, torch.bfloat16)


def in_place_ok(delta):
    """Whether backward may reuse its own temporaries in place (fewer full-size passes and allocations):
    not when backward is itself recorded (create_graph), nor under vmap (torch.func, or autograd.grad's
    is_grads_batched), where an in-place op fails on a tensor batched less than its operand."""
    if torch.is_grad_enabled() or torch._C._are_functorch_transforms_active():
        return False
    return compiling() or not _legacy_batched(delta)  # (dynamo cannot trace the latter: a graph break)


_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def rows_in_place(delta, x, mu, r, w, need_x, need_w, need_b):
    """``normalization._plain`` for layer_norm / rms_norm, expanded and in place: x, δ as (R, D) rows,
    μ, r as (R, 1), γ as (D,) or None, μ None for rms_norm. One full-size temporary, P = δ ⊙ (x − μ), whose buffer then becomes δ_x (native
    allocates δ_x too); the sums over P are matrix-vector products, with no temporaries:
    ∂J/∂γ = Pᵀ r,  ∂J/∂β = Σ_rows δ,  mean(g ⊙ x̂) = r·(P γ)/D,  mean(g) = Σ_cols g/D, so
    δ_x = r ⊙ g + a ⊙ x + b,  a = −r³·(P γ)/D,  b = −r·mean(g) − μ·a.
    P holds x − μ, not x: the one pass it would save costs, through δ ⊙ x − μ·δ, a cancellation when
    |μ| ≫ σ that native's ∂J/∂γ does not have."""
    R, D = x.shape
    gb = delta.sum(0, dtype=r.dtype) if need_b else None
    if not (need_x or need_w):
        return None, None, gb
    P = x.to(r.dtype) * delta if mu is None else torch.sub(x, mu).mul_(delta)
    gw = torch.mv(P.t(), r.reshape(R)) if need_w else None
    grad_x = None
    if need_x:
        c = r / -D
        a = (torch.mv(P, w) if w is not None else P.sum(1)).reshape(R, 1).mul_(r * r).mul_(c)
        if w is not None:  # g = δ ⊙ γ, then r ⊙ g
            grad_x = torch.mul(delta, w, out=P)
            m1 = grad_x.sum(1, keepdim=True) if mu is not None else None
            grad_x.mul_(r)
        else:
            m1 = delta.sum(1, keepdim=True, dtype=r.dtype) if mu is not None else None
            grad_x = torch.mul(delta, r, out=P)
        grad_x.addcmul_(x, a)
        if mu is not None:
            grad_x.add_(m1.mul_(c).sub_(mu * a))
    return grad_x, gw, gb


def _cells_are_the_reduction(delta, x, mu, r, w, red, pdims, need_w, need_b):
    """``cells_in_place`` in training, in one chunk, where every cell is one reduction set (batch_norm's
    channels, instance_norm's (sample, channel) planes): its per-cell factors in the fewest ops, each a
    product of the two sums c1 = Σδ, c2 = Σ δ ⊙ (x − μ) with r, γ: ∂J/∂γ = c2 r, k = r γ, u = −k / M,
    a = (c2 r)(u r) = −c2 γ r³ / M, b = c1 u − μ a; δ_x = a ⊙ x + b + k ⊙ δ written into P's buffer."""
    M = math.prod([x.shape[d] for d in red])
    c1 = delta.sum(red, keepdim=True, dtype=r.dtype)
    P = torch.sub(x, mu).mul_(delta)
    gw = P.sum(red, keepdim=True).mul_(r)
    k = r if w is None else r * w
    u = k / -M
    a = gw * (u * r)
    b = torch.addcmul(c1 * u, mu, a, value=-1)
    grad_x = torch.mul(x, a, out=P).add_(b).addcmul_(delta, k)
    return grad_x, _sum(gw, pdims) if need_w else None, _sum(c1, pdims) if need_b else None


def _sum(t, dims):
    """t summed over ``dims`` (kept), or t itself where it already has extent 1 along all of them (a per-cell
    sum whose cells span those dims)."""
    return t if all(t.shape[d] == 1 for d in dims) else t.sum(dims, keepdim=True)


HALF_CHUNK = 1 << 19  # elements of x per batch chunk in cells_in_place for float16 / bfloat16 on the CPU


def cells_in_place(delta, x, mu, r, w, red, pdims, cell, training, need_x, need_w, need_b, chunk_elems=None):
    """``normalization._plain`` for batch_norm / group_norm, expanded and in place: x, δ viewed so that
    μ, r (reduced over ``red``) and γ (broadcast along ``pdims``) are all constant along the ``cell`` dims.
    Every factor of δ_x is then one number per cell: δ_x = k ⊙ δ + a ⊙ x + b with k = r·γ, three passes.
    The sums Σδ, Σ δ ⊙ (x − μ) are taken per cell once and give ∂J/∂β, ∂J/∂γ and the means (x − μ, not x:
    see ``rows_in_place``). One full-size temporary at a time, P = δ ⊙ (x − μ) and then δ_x (native
    allocates δ_x too).
    float16 / bfloat16 on the CPU: the batch is taken in chunks of about ``chunk_elems`` elements (default
    ``HALF_CHUNK``), so the float32 temporaries (and the float32 copies the CPU makes of a half operand in a
    mixed op) are a chunk's, and δ_x goes into one buffer of x's dtype; each chunk is converted to float32
    once, up front, because the CPU's mixed-dtype kernels convert element by element.
    """
    stats = need_x and training
    N = x.shape[0]
    half_cpu = x.dtype in _LOW and x.device.type == "cpu"
    if stats and not half_cpu and tuple(cell) == tuple(red):
        return _cells_are_the_reduction(delta, x, mu, r, w, red, pdims, need_w, need_b)
    nc = max(1, min(N, -(-x.numel() // (chunk_elems or HALF_CHUNK)))) if half_cpu else 1
    step = max(1, -(-N // nc))
    chunks = [slice(i, i + step) for i in range(0, N, step)] or [slice(0, 0)]

    def part(t, s):  # a chunk's rows of a per-sample factor (group_norm's); batch_norm's are one row
        return t if len(chunks) == 1 or t is None or t.shape[0] != N else t[s]

    def chunk(t, s):  # a chunk of x or δ, as a fresh float32 copy where x is half precision on the CPU
        return t[s].to(torch.float32, copy=True) if half_cpu else t[s]

    spare = []  # one chunk: P's buffer, which then takes δ_x (no second full-size allocation)

    def sums(s):  # a chunk's Σδ and Σ δ ⊙ (x − μ) per cell
        d = chunk(delta, s)
        s1 = d.sum(cell, keepdim=True, dtype=r.dtype) if need_b or stats else None
        if need_w or stats:
            xc = chunk(x, s).sub_(part(mu, s)) if half_cpu else torch.sub(x[s], part(mu, s))
            P = xc.mul_(d)
            if len(chunks) == 1 and need_x and training:
                spare.append(P)
            return s1, P.sum(cell, keepdim=True)
        return s1, None

    # per-cell sums over the chunks: added where the cell spans the batch, else stacked
    parts = list(zip(*[sums(s) for s in chunks]))
    c1, c2 = (None if p[0] is None else sum(p[1:], p[0]) if 0 in cell else torch.cat(p) for p in parts)
    gw = _sum(c2 * r, pdims) if need_w else None
    gb = _sum(c1, pdims) if need_b else None
    grad_x = None
    if need_x:
        k = r if w is None else r * w
        a = b = None
        if training:  # a = −Σ(γ Σ δ ⊙ (x − μ)) r³ / M,  b = −Σ(γ Σ δ) r / M − μ a  (the outer Σ over ``red``)
            M = math.prod([x.shape[d] for d in red])
            if w is not None:  # (new tensors: c1, c2 may be ∂J/∂β's and ∂J/∂γ's own)
                c1, c2 = c1 * w, c2 * w
            u = r / -M
            a = (_sum(c2, red) * u).mul_(r).mul_(r)
            b = torch.addcmul(_sum(c1, red) * u, mu, a, value=-1)
        for s in chunks:
            if training:  # δ_x = (a ⊙ x + b) + k ⊙ δ, the first into a buffer of our own where there is one
                if spare:  # P's: x goes in (converted to float32 where half), then a ⊙ x + b in place
                    buf = spare.pop()
                    g = buf.copy_(x[s]).mul_(part(a, s)) if half_cpu else torch.mul(x[s], part(a, s), out=buf)
                elif half_cpu:
                    g = chunk(x, s).mul_(part(a, s))
                else:
                    g = x[s] * part(a, s)
                # (a ⊙ x, then + b in place: addcmul with the per-cell b as its broadcast first operand runs
                # a slower loop than the two)
                g.add_(part(b, s)).addcmul_(chunk(delta, s), part(k, s))
            else:
                g = chunk(delta, s).mul_(part(k, s)) if half_cpu else delta[s] * part(k, s)
            if len(chunks) == 1:
                grad_x = g
            else:
                grad_x = torch.empty_like(x) if grad_x is None else grad_x
                grad_x[s].copy_(g)
    return grad_x, gw, gb
