"""Convolution: the derivation's affine layer with W shared across positions, z = W ⋆ a + b.

Written once for any number of spatial dims n (conv1d, conv2d): the forward is the native
convolution; the backward is the derivation's three formulas, each itself a convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import LOWER, DeltaFunction, _named, apply, check, check_compatible, check_tensor, fail
from .fastpath import conv as fast

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class Conv(DeltaFunction):
    """z[o, y] = Σ_{c,i} W[o, c, i] a[c, s·y + d·i − p] + b[o]  (per group; y, i spatial multi-indices).

    backward, with δ = ∂J/∂z:
      δ_a   = Wᵀ ⋆ δ: the transposed convolution of δ with W (the derivation's Σ_q W_{q←k} δ_q, each input
              position collecting from every output position whose window covers it)    ``_grad_a``
      ∂J/∂W = a ⋆ δ:  W[o, c, i] gets Σ_{batch, y} δ[o, y] a[c, s·y + d·i − p] (the derivation's δ aᵀ), one
              convolution of a (batch and channels swapped) with δ as the kernel              ``_grad_W``
      ∂J/∂b = Σ_{batch, y} δ                                                                 ``_grad_b``
    ``padding`` here is symmetric ints; the functional forms lower "same"/"valid" to that. The batch sums,
    and a pointwise convolution's δ_a, run in the form this device and dtype run fastest (``fastpath.conv``),
    held equal to these.
    """

    @staticmethod
    def forward(a, W, b, stride, padding, dilation, groups):
        return _CONV[W.dim() - 2](a, W, b, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, W, b, ctx.stride, ctx.padding, ctx.dilation, ctx.groups = inputs
        _save(ctx, a, W, b)

    @staticmethod
    def backward(ctx, delta):
        a, W, need_a, s, p, d, g = _saved(ctx)
        grad_a = fast.input_grad(delta, W, s, p, d, g, ctx.a_shape[2:], _grad_a) if need_a else None
        return (grad_a, *_param_grads(ctx, a, delta, delta), None, None, None, None)


def _grad_a(delta, W, s, p, d, g, L):
    """δ_a = Wᵀ ⋆ δ, the transposed convolution of δ with W, shaped like a (spatial extent L)."""
    n, K, O = len(L), W.shape[2:], delta.shape[2:]
    # stride > 1 drops the last (L + 2p − d(k−1) − 1) mod s inputs from every window: output_padding gives
    # them back (as zeros) so δ_a has the input's exact shape.
    out_pad = [L[i] - ((O[i] - 1) * s[i] - 2 * p[i] + d[i] * (K[i] - 1) + 1) for i in range(n)]
    return _CONV_T[n](delta, W, None, s, p, out_pad, g, d)


def _grad_W(x, k, s, p, d, g, K):
    """∂J/∂W = x ⋆ k: W[o, c, i] = Σ_{batch, y} k[o, y] x[c, s·y + d·i − p] (x = a, k = δ for a convolution;
    x = δ, k = a for a transposed one), as ONE convolution of x (batch and channels swapped) with k as the
    kernel, stride and dilation exchanged. Returns (k's channels, x's channels / g, *K), a transposed view."""
    n = len(K)
    N, C, *L = x.shape
    # x as (C/g, g·N, *L): the C/g channels of a group become the batch, (group, sample) the channels;
    # k as (O, N, *Y): each group's k is the kernel over its N samples.
    xt = x.reshape(N, g, C // g, *L).transpose(0, 2).reshape(C // g, g * N, *L) if g > 1 else x.transpose(0, 1)
    gw = _CONV[n](xt, k.transpose(0, 1), None, d, p, s, g)  # (C/g, O, ≥K)
    for i in range(n):  # the correlation may reach past the kernel's extent: keep K
        gw = gw.narrow(2 + i, 0, K[i])
    return gw.transpose(0, 1)


def _grad_b(delta):
    """∂J/∂b = Σ_{batch, y} δ."""
    return delta.sum([0, *range(2, delta.dim())])


def _save(ctx, a, W, b):
    """What a (transposed) convolution's backward needs: a for ∂J/∂W, W for δ_a, and the shapes."""
    need_a, need_W = ctx.needs_input_grad[:2]
    ctx.save_for_backward(a if need_W else None, W if need_a else None)
    ctx.a_shape, ctx.W_shape, ctx.has_bias = a.shape, W.shape, b is not None


def _saved(ctx):
    """A (transposed) convolution's backward preamble: a, W, whether δ_a is needed, stride, padding,
    dilation, groups."""
    a, W = ctx.saved_tensors
    return a, W, ctx.needs_input_grad[0], ctx.stride, ctx.padding, ctx.dilation, ctx.groups


def _param_grads(ctx, x, k, delta):
    """(∂J/∂W = x ⋆ k, ∂J/∂b = Σ δ), each None where not needed; summed over the batch by
    ``fastpath.conv`` (which calls ``_grad_W`` / ``_grad_b`` where the plain formula is fastest)."""
    need_W, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias
    grad_W = fast.weight_grad(x, k, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, ctx.W_shape[2:],
                              _grad_W, _CHUNK_ELEMS) if need_W else None
    grad_b = fast.bias_grad(delta, _grad_b, _CHUNK_ELEMS) if need_b else None
    return grad_W, grad_b


_CHUNK_ELEMS = None  # None: fastpath.conv's own; a test sets it to force one batch chunk per sample


class ConvTranspose(DeltaFunction):
    """z = Wᵀ ⋆ a + b, the adjoint of the convolution with the same stride s, padding p, dilation d:
    z[o, s·y + d·i − p] += Σ_c W[c, o, i] a[c, y]  (per group; W is (C_in, C_out/g, k), a transposed
    convolution's layout), the last ``output_padding`` positions of z only receiving b.

    backward, with δ = ∂J/∂z (the convolution's three formulas with the roles of a and δ exchanged):
      δ_a   = W ⋆ δ: the (forward) convolution of δ with W, same s, p, d, groups (Σ over the output
              positions a[c, y] was spread to, of W δ)
      ∂J/∂W = δ ⋆ a:  W[c, o, i] gets Σ_{batch, y} a[c, y] δ[o, s·y + d·i − p] (the derivation's δ aᵀ, δ now on the
              input side: ``_grad_W`` with δ as the convolved map and a as the kernel)
      ∂J/∂b = Σ_{batch, y} δ
    """

    @staticmethod
    def forward(a, W, b, stride, padding, output_padding, dilation, groups):
        return _CONV_T[W.dim() - 2](a, W, b, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, W, b, ctx.stride, ctx.padding, _, ctx.dilation, ctx.groups = inputs
        _save(ctx, a, W, b)

    @staticmethod
    def backward(ctx, delta):
        a, W, need_a, s, p, d, g = _saved(ctx)
        grad_a = None
        if need_a:
            grad_a = _CONV[len(s)](delta, W, None, s, p, d, g)
            for i, l in enumerate(ctx.a_shape[2:]):  # output_padding ≥ s (allowed when < d) gives rows past a's last
                if grad_a.shape[2 + i] != l:
                    grad_a = grad_a.narrow(2 + i, 0, l)
        return (grad_a, *_param_grads(ctx, delta, a, delta), None, None, None, None, None)


class Pad(DeltaFunction):
    """a_pad = a extended by a constant (negative pads crop), or indexed by a per-dim map of padded
    positions to input positions (reflect, replicate, circular).

    backward: for a constant, δ_a is δ without its border (with zeros where a pad cropped: the constant
    does not depend on a); otherwise δ_a[j] = Σ over padded positions t that read input j of δ[t]
    (index_add per dim).
    """

    @staticmethod
    def forward(a, pad, mode, value):
        return F.pad(a, pad, mode, value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, ctx.pad, ctx.mode, _ = inputs
        ctx.a_shape = a.shape

    @staticmethod
    def backward(ctx, delta):
        if ctx.mode == "constant":
            return F.pad(delta, [-q for q in ctx.pad]), None, None, None
        g = delta
        for j in range(len(ctx.pad) // 2):  # pad lists the last dim first, as F.pad does
            dim, lo, hi = delta.dim() - 1 - j, ctx.pad[2 * j], ctx.pad[2 * j + 1]
            L = ctx.a_shape[dim]
            t = torch.arange(-lo, L + hi, device=delta.device)
            if ctx.mode == "reflect":
                t = (L - 1) - ((L - 1) - t.abs()).abs()
            elif ctx.mode == "replicate":
                t = t.clamp(0, L - 1)
            else:  # circular: a negative pad crops first, the positive pads wrap around what remains
                c0, lc = max(-lo, 0), L - max(-lo, 0) - max(-hi, 0)
                t = (t - c0).remainder(lc) + c0
            shape = list(g.shape)
            shape[dim] = L
            g = g.new_zeros(shape).index_add_(dim, t, g)
        return g, None, None, None


def pad(input, pad, mode="constant", value=None):
    """δ twin of ``F.pad``: "constant" (any value), "reflect", "replicate", "circular"; negative pads crop
    in every mode, as native's. Shape and size errors are F.pad's own, naming this op."""
    op = "pad"
    check_tensor(op, "input", input)
    check(mode in ("constant", "reflect", "replicate", "circular"), op, f"unsupported mode {mode!r}")
    check(mode == "constant" or value is None, op, f"padding mode {mode!r} doesn't take in value argument")
    with _named(op):
        return Pad.apply(input, tuple(pad), mode, value)


# The checks below run on every call: each message is built only when its check fails.

def _tuple(v, n, op, name):
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(v) != n or not all(isinstance(i, int) for i in v):
        fail(op, f"{name} must be an int or a tuple of {n} ints, got {v}")
    return v


def _check_args(op, n, input, weight, bias, groups, layout):
    """The checks a convolution and a transposed one share; returns the input's channel count. ``layout``:
    the weight's leading dims, as its error names them."""
    check_compatible(op, input=input, weight=weight, bias=bias)
    if weight.dim() != n + 2:
        fail(op, f"weight must be {n + 2}-D ({layout}, {', '.join(('kD', 'kH', 'kW')[3 - n:])}), "
                 f"got shape {list(weight.shape)}")
    if input.dim() not in (n + 1, n + 2):
        fail(op, f"expected {n + 1}-D (unbatched) or {n + 2}-D (batched) input, got shape "
                 f"{list(input.shape)}")
    if not (isinstance(groups, int) and groups > 0):
        fail(op, f"groups must be a positive int, got {groups}")
    return input.shape[-n - 1]


def _apply_batched(cls, n, input, *args):
    """cls applied to a batched input (an unbatched one gains and loses a batch dim of 1 around it)."""
    batched = input.dim() == n + 2
    out = apply(cls, LOWER, input if batched else input.unsqueeze(0), *args)
    return out if batched else out.squeeze(0)


def _conv(op, n, input, weight, bias, stride, padding, dilation, groups):
    C = _check_args(op, n, input, weight, bias, groups, "out_channels, in_channels/groups")
    if C != weight.shape[1] * groups:
        fail(op, f"input has {C} channels (shape {list(input.shape)}) but weight expects "
                 f"{weight.shape[1] * groups} = {weight.shape[1]} x groups {groups} (shape "
                 f"{list(weight.shape)})")
    if weight.shape[0] % groups:
        fail(op, f"out_channels {weight.shape[0]} not divisible by groups {groups}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        fail(op, f"bias must have shape [{weight.shape[0]}], got {list(bias.shape)}")
    stride, dilation = _tuple(stride, n, op, "stride"), _tuple(dilation, n, op, "dilation")
    if isinstance(padding, str):
        check(padding in ("same", "valid"), op, f"padding must be 'same', 'valid' or ints, got {padding!r}")
        if padding == "valid":
            padding = (0,) * n
        else:
            check(all(s == 1 for s in stride), op, "padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            padding = tuple(t // 2 for t in total)
            extra = [t - 2 * (t // 2) for t in total]
            if any(extra):  # odd total: the extra zero goes after the input, as torch does
                input = pad(input, [q for e in reversed(extra) for q in (0, e)])
    else:
        padding = _tuple(padding, n, op, "padding")
    if not all(q >= 0 for q in padding):
        fail(op, f"negative padding {padding}")
    return _apply_batched(Conv, n, input, weight, bias, stride, padding, dilation, groups)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """δ twin of ``torch.nn.functional.conv1d``."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """δ twin of ``torch.nn.functional.conv2d``."""
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """δ twin of ``torch.nn.functional.conv3d``."""
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose(op, n, input, weight, bias, stride, padding, output_padding, groups, dilation):
    C = _check_args(op, n, input, weight, bias, groups, "in_channels, out_channels/groups")
    if C != weight.shape[0]:
        fail(op, f"input has {C} channels (shape {list(input.shape)}) but weight expects "
                 f"{weight.shape[0]} (shape {list(weight.shape)}, a transposed convolution's "
                 "(in, out/groups, ...))")
    if C % groups:
        fail(op, f"in_channels {C} not divisible by groups {groups}")
    C_out = weight.shape[1] * groups
    if bias is not None and tuple(bias.shape) != (C_out,):
        fail(op, f"bias must have shape [{C_out}], got {list(bias.shape)}")
    stride, dilation = _tuple(stride, n, op, "stride"), _tuple(dilation, n, op, "dilation")
    padding, output_padding = _tuple(padding, n, op, "padding"), _tuple(output_padding, n, op, "output_padding")
    if not all(q >= 0 for q in padding):
        fail(op, f"negative padding {padding}")
    if not all(0 <= q < max(s, d) for q, s, d in zip(output_padding, stride, dilation)):
        fail(op, f"output_padding {output_padding} must be smaller than either stride {stride} or "
                 f"dilation {dilation}")
    return _apply_batched(ConvTranspose, n, input, weight, bias, stride, padding, output_padding, dilation, groups)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """δ twin of ``torch.nn.functional.conv_transpose1d``."""
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """δ twin of ``torch.nn.functional.conv_transpose2d``."""
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """δ twin of ``torch.nn.functional.conv_transpose3d``."""
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


# native callable -> δ twin with the same signature; read by torchbp.registry
# (F.conv1d is torch.conv1d and F.conv2d is torch.conv2d: one object each; likewise conv_transpose)
ROUTES = {F.conv1d: conv1d, F.conv2d: conv2d, F.conv3d: conv3d, F.conv_transpose1d: conv_transpose1d,
          F.conv_transpose2d: conv_transpose2d, F.conv_transpose3d: conv_transpose3d, F.pad: pad}

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "pad"]
