"""Pooling: layers without weights, so the derivation's δ only passes through them to the layer below.

Max pooling passes δ to the one input each window picked; average pooling spreads it over the window.
Pooling runs in its input's dtype (autocast leaves it alone).
"""
from __future__ import annotations

import math
from math import inf, nan

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, _functorch_active, check, check_tensor
from .fastpath import pooling as fast

_MAX = {1: torch.max_pool1d_with_indices, 2: torch._C._nn.max_pool2d_with_indices,
        3: torch._C._nn.max_pool3d_with_indices}
_ADAPTIVE_MAX = {1: torch.adaptive_max_pool1d, 2: torch._C._nn.adaptive_max_pool2d,
                 3: torch._C._nn.adaptive_max_pool3d}  # (out, indices)
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: torch._C._nn.adaptive_avg_pool2d,
                 3: torch._C._nn.adaptive_avg_pool3d}


class MaxPool(DeltaFunction):
    """a[y] = max over window(y) of a_prev = a_prev[idx[y]] (idx: the native op's choice, ties included).

    backward: δ_prev[j] = Σ_{y : idx[y] = j} δ[y]  (a scatter: only overlapping windows can pick one j twice
    and need the add, which for bfloat16/half also costs a float32 buffer of the input's size).
    ``kernel_size is None`` means adaptive pooling, ``stride`` then being the output size.
    """

    @staticmethod
    def forward(x, n, kernel_size, stride, padding, dilation, ceil_mode):
        if kernel_size is None:
            return _ADAPTIVE_MAX[n](x, stride)
        if n == 2:  # on the CPU through the channels-last kernel where it is faster
            return fast.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
        return _MAX[n](x, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, n, k, s, _, d = inputs[:6]
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # else autograd allocates a zero δ for the int64 indices
        ctx.save_for_backward(output[1])
        ctx.x_shape, ctx.n = x.shape, n
        if k is None:  # adaptive: windows [⌊yL/O⌋, ⌈(y+1)L/O⌉) overlap unless O divides L
            ctx.overlap = any(L % O for L, O in zip(x.shape[-n:], s))
        else:
            ctx.overlap = any(di * (ki - 1) + 1 > si for ki, si, di in zip(k, s, d))

    @staticmethod
    def backward(ctx, delta, _):
        if delta is None:
            return (None,) * 7
        (idx,) = ctx.saved_tensors
        n, shape = ctx.n, ctx.x_shape
        g = delta.new_zeros(*shape[:-n], shape[-n:].numel())
        if ctx.overlap:
            g = g.scatter_add_(-1, idx.flatten(-n), delta.flatten(-n))
        elif delta.dtype in (torch.bfloat16, torch.float16) and not torch.is_grad_enabled():
            # CPU's scatter_ stages half types through float32; scattering their bits as int16 moves the
            # same values exactly, with no temporary (first-order only: a dtype view has no gradient)
            g.view(torch.int16).scatter_(-1, idx.flatten(-n), delta.flatten(-n).view(torch.int16))
        elif delta.dtype in (torch.bfloat16, torch.float16):
            # double backward: a put_ at global positions (an int64 index instead of a float32 copy)
            L = g.shape[-1]
            plane = torch.arange(0, g.numel(), L, device=g.device).view(*g.shape[:-1], *[1] * n)
            g = g.view(-1).put_((idx + plane).view(-1), delta.reshape(-1)).view(g.shape)
        else:
            g = g.scatter_(-1, idx.flatten(-n), delta.flatten(-n))
        return g.view(shape), None, None, None, None, None, None


def _windows(ctx, delta):
    """Per spatial dim, ([j in window y] as an L × O bool, the divisor of each window y)."""
    out = []
    for i, (L, O) in enumerate(zip(ctx.x_shape[-ctx.n:], delta.shape[-ctx.n:])):
        y = torch.arange(O, device=delta.device)
        if ctx.adaptive:  # window y = [⌊yL/O⌋, ⌈(y+1)L/O⌉)
            start, end = (y * L) // O, ((y + 1) * L + O - 1) // O
            div = end - start
        else:
            k, s, p = ctx.kernel_size[i], ctx.stride[i], ctx.padding[i]
            start = y * s - p
            end = (start + k).clamp(max=L + p)  # ceil_mode's last window may stop at the padding's edge
            div = end - start  # count_include_pad: the window's size within the padded input
            start, end = start.clamp(min=0), end.clamp(max=L)
            if not ctx.count_include_pad:
                div = end - start
            if ctx.divisor_override:
                div = torch.full_like(div, ctx.divisor_override if i == 0 else 1)
        j = torch.arange(L, device=delta.device)[:, None]
        out.append(((j >= start) & (j < end), div))
    return out


def _window_matrices(ctx, delta):
    """Per spatial dim, B (L × O) with B[j, y] = [j in window y] / divisor share of y: the averaging is
    separable, so the pooled map is Bᵀ a_prev along every dim and its transpose is B δ."""
    return [inside.to(delta.dtype) / div.to(delta.dtype) for inside, div in _windows(ctx, delta)]


class AvgPool(DeltaFunction):
    """a[y] = (1 / divisor(y)) Σ_{j in window(y)} a_prev[j], separable over the spatial dims.

    backward: δ_prev[j] = Σ_{y : j in window(y)} δ[y] / divisor(y), i.e. B δ per spatial dim with the
    window matrix B above (zero padding contributes nothing, so it has no rows). Adaptive pooling to one
    position (global average pooling) has one window of all ∏L inputs: δ_prev[j] = δ / ∏L for every j.
    ``kernel_size is None`` means adaptive pooling, whose windows are computed from the sizes alone.
    """

    @staticmethod
    def forward(x, n, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        if kernel_size is None:
            return _ADAPTIVE_AVG[n](x, stride)
        if n == 1:
            return torch.avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
        if n == 3:
            return torch._C._nn.avg_pool3d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                           divisor_override)
        return torch._C._nn.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                       divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, ctx.n, ctx.kernel_size, ctx.stride, ctx.padding, _, ctx.count_include_pad,
         ctx.divisor_override) = inputs
        ctx.x_shape, ctx.adaptive = x.shape, ctx.kernel_size is None

    @staticmethod
    def backward(ctx, delta):
        opmath = torch.float32 if delta.dtype in (torch.float16, torch.bfloat16) else delta.dtype
        if ctx.adaptive and all(o == 1 for o in ctx.stride):
            # adaptive pooling to one position: every input is in the one window, of ∏L inputs, so
            # δ_prev[j] = δ / ∏L for each (sample, channel), spread over the map (no window to build)
            L = math.prod(ctx.x_shape[-ctx.n:])
            return ((delta.to(opmath) / L).to(delta.dtype).expand(ctx.x_shape).contiguous(),
                    None, None, None, None, None, None, None)
        if all(o == 1 for o in delta.shape[-ctx.n:]):
            # one window over the whole map (global pooling): δ_prev[j] = [j in the window] · δ / divisor,
            # δ / divisor for each (sample, channel) first (in float32 for half types, rounded once, as
            # native's kernel), then selected inside the 0/1 window (GEMMs with one inner element are slow)
            (in0, d0), *rest = _windows(ctx, delta)
            inside, div = (in0[:, 0], d0) if ctx.n == 1 else (in0 & rest[0][0].T, d0 * rest[0][1])
            if ctx.n == 3:  # the (D, H, W) window: D's 0/1 column times the (H, W) one of H and W
                inside, div = in0[:, :, None] & (rest[0][0] & rest[1][0].T), div * rest[1][1]
            share = (delta.to(opmath) / div.to(opmath)).to(delta.dtype)
            # where, not a product with the 0/1 window: a NaN or inf δ stays inside its window
            return torch.where(inside, share, 0), None, None, None, None, None, None, None
        mats = _window_matrices(ctx, delta)
        finite = torch.isfinite(delta)
        if _known_finite(finite):
            return _spread(ctx.n, mats, delta), None, None, None, None, None, None, None
        # A NaN or ±inf δ[y] reaches only the inputs of window y, as native's: the products with B would
        # spread it along whole rows (NaN · 0), so the finite δ go through B and each kind of non-finite
        # one marks the inputs its windows cover
        g = _spread(ctx.n, mats, torch.where(finite, delta, 0))
        hit = [_spread(ctx.n, mats, m.to(delta.dtype)) > 0 for m in (delta == inf, delta == -inf, delta.isnan())]
        g = g.masked_fill(hit[0], inf).masked_fill(hit[1], -inf).masked_fill(hit[2] | hit[0] & hit[1], nan)
        return g, None, None, None, None, None, None, None


def _known_finite(finite):
    """Whether every δ is known finite, so the window products need no care (on CUDA the check would wait
    for the device, and under a functorch transform such as vmap a tensor's value cannot steer Python: not
    checked there)."""
    transformed = _functorch_active is None or _functorch_active()
    return finite.device.type == "cpu" and not transformed and bool(finite.all())


def _spread(n, mats, delta):
    """B δ along each of the n spatial dims (``_window_matrices``)."""
    if n == 1:
        return delta @ mats[0].T
    if n == 3:  # along W, then H, then D (B_D on the left of the flattened (H, W) planes)
        g = mats[1] @ (delta @ mats[2].T)
        return (mats[0] @ g.flatten(-2)).view(*g.shape[:-3], mats[0].shape[0], *g.shape[-2:])
    # along W, then along H with B on the left: δ_prev comes out contiguous (a transposed δ_prev made the
    # ops after it, e.g. the ReLU δ before a global pool, slower), at GEMM speed
    return mats[0] @ (delta @ mats[1].T)


def _tuple(v, n, op, name):
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(v) == 1:  # a 1-element tuple holds for every dim, as native reads it
        v = v * n
    check(len(v) == n and all(isinstance(i, int) for i in v), op,
          f"{name} must be an int or a tuple of {n} ints, got {v}")
    return v


def _check_input(op, n, x):
    check_tensor(op, "input", x)
    check(x.dim() in (n + 1, n + 2), op, f"expected {n + 1}-D (unbatched) or {n + 2}-D (batched) input, "
          f"got shape {list(x.shape)}")
    check(all(s > 0 for s in x.shape[-n - 1:]), op, f"input has a zero-size channel or spatial dim, "
          f"shape {list(x.shape)}")
    check(x.is_floating_point(), op, f"input must be floating point, got {x.dtype}")


def _window(op, n, input, kernel_size, stride):
    """(kernel_size, stride) as n-tuples after the input checks; stride defaults to the kernel size (None or
    (), as torch spells it)."""
    _check_input(op, n, input)
    k = _tuple(kernel_size, n, op, "kernel_size")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _tuple(stride, n, op, "stride")
    return k, s


def _max_pool(op, n, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    k, s = _window(op, n, input, kernel_size, stride)
    out, idx = MaxPool.apply(input, n, k, s, _tuple(padding, n, op, "padding"),
                             _tuple(dilation, n, op, "dilation"), bool(ceil_mode))
    return (out, idx) if return_indices else out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """δ twin of ``torch.nn.functional.max_pool1d``."""
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """δ twin of ``torch.nn.functional.max_pool2d``."""
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """δ twin of ``F.max_pool1d_with_indices`` (always returns the indices, as it does)."""
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """δ twin of ``F.max_pool2d_with_indices`` (always returns the indices, as it does)."""
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def _torch_max_pool(n):  # torch.max_poolNd(input, kernel_size, stride=(), ...): no return_indices
    def f(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        return _max_pool(f"max_pool{n}d", n, input, kernel_size, stride, padding, dilation, ceil_mode, False)
    return f


def _avg_pool(op, n, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    k, s = _window(op, n, input, kernel_size, stride)
    check(divisor_override is None or (isinstance(divisor_override, int) and divisor_override != 0), op,
          f"divisor_override must be a non-zero int or None, got {divisor_override!r}")
    return AvgPool.apply(input, n, k, s, _tuple(padding, n, op, "padding"), bool(ceil_mode),
                         bool(count_include_pad), divisor_override)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """δ twin of ``torch.nn.functional.avg_pool1d``."""
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """δ twin of ``torch.nn.functional.avg_pool2d``."""
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def _output_size(op, n, input, output_size):
    _check_input(op, n, input)
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * n
    check(len(size) == n, op, f"output_size must be an int or a tuple of {n}, got {output_size}")
    size = tuple(L if o is None else o for o, L in zip(size, input.shape[-n:]))
    check(all(isinstance(o, int) and o > 0 for o in size), op, f"output_size must be positive ints, got {size}")
    return size


def _adaptive(op, n, input, output_size):
    return AvgPool.apply(input, n, None, _output_size(op, n, input, output_size), None, False, True, None)


def _adaptive_max(op, n, input, output_size, return_indices):
    out, idx = MaxPool.apply(input, n, None, _output_size(op, n, input, output_size), None, None, False)
    return (out, idx) if return_indices else out


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """δ twin of ``torch.nn.functional.adaptive_max_pool1d``."""
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """δ twin of ``torch.nn.functional.adaptive_max_pool2d``."""
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, return_indices)


def adaptive_max_pool1d_with_indices(input, output_size, return_indices=False):
    """δ twin of ``F.adaptive_max_pool1d_with_indices`` (always returns the indices, as it does)."""
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, True)


def adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    """δ twin of ``F.adaptive_max_pool2d_with_indices`` (always returns the indices, as it does)."""
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, True)


def adaptive_avg_pool1d(input, output_size):
    """δ twin of ``torch.nn.functional.adaptive_avg_pool1d``."""
    return _adaptive("adaptive_avg_pool1d", 1, input, output_size)


def adaptive_avg_pool2d(input, output_size):
    """δ twin of ``torch.nn.functional.adaptive_avg_pool2d``."""
    return _adaptive("adaptive_avg_pool2d", 2, input, output_size)


# --- 3-D pooling (video models): the same Functions over (D, H, W) ---------------------------------------

def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """δ twin of ``torch.nn.functional.max_pool3d``."""
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """δ twin of ``F.max_pool3d_with_indices`` (always returns the indices, as it does)."""
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """δ twin of ``torch.nn.functional.avg_pool3d``."""
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def adaptive_avg_pool3d(input, output_size):
    """δ twin of ``torch.nn.functional.adaptive_avg_pool3d``."""
    return _adaptive("adaptive_avg_pool3d", 3, input, output_size)


def adaptive_max_pool3d(input, output_size, return_indices=False):
    """δ twin of ``torch.nn.functional.adaptive_max_pool3d``."""
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, return_indices)


def adaptive_max_pool3d_with_indices(input, output_size, return_indices=False):
    """δ twin of ``F.adaptive_max_pool3d_with_indices`` (always returns the indices, as it does)."""
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, True)


_ROUTES_3D = {  # F.avg_pool3d is torch._C._nn.avg_pool3d
    F.max_pool3d: max_pool3d, F.max_pool3d_with_indices: max_pool3d_with_indices,
    torch.max_pool3d: _torch_max_pool(3), torch._C._nn.max_pool3d_with_indices: max_pool3d_with_indices,
    F.avg_pool3d: avg_pool3d, F.adaptive_avg_pool3d: adaptive_avg_pool3d,
    torch._C._nn.adaptive_avg_pool3d: adaptive_avg_pool3d,
    F.adaptive_max_pool3d: adaptive_max_pool3d,
    F.adaptive_max_pool3d_with_indices: adaptive_max_pool3d_with_indices,
    torch._C._nn.adaptive_max_pool3d: adaptive_max_pool3d_with_indices,
}

# native callable -> δ twin with the same signature; read by torchbp.registry. F.max_pool1d/2d are
# Python dispatchers distinct from torch.max_pool1d/2d (both are routed); F.avg_pool1d is torch.avg_pool1d,
# F.avg_pool2d is torch._C._nn.avg_pool2d, F.adaptive_avg_pool1d is torch.adaptive_avg_pool1d.
ROUTES = {
    F.max_pool1d: max_pool1d, F.max_pool2d: max_pool2d,
    F.max_pool1d_with_indices: max_pool1d_with_indices, F.max_pool2d_with_indices: max_pool2d_with_indices,
    torch.max_pool1d: _torch_max_pool(1), torch.max_pool2d: _torch_max_pool(2),
    torch.max_pool1d_with_indices: max_pool1d_with_indices,
    F.avg_pool1d: avg_pool1d, F.avg_pool2d: avg_pool2d,
    F.adaptive_avg_pool1d: adaptive_avg_pool1d, F.adaptive_avg_pool2d: adaptive_avg_pool2d,
    torch._C._nn.adaptive_avg_pool2d: adaptive_avg_pool2d,
    F.adaptive_max_pool1d: adaptive_max_pool1d, F.adaptive_max_pool2d: adaptive_max_pool2d,
    F.adaptive_max_pool1d_with_indices: adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d_with_indices: adaptive_max_pool2d_with_indices,
    torch.adaptive_max_pool1d: adaptive_max_pool1d_with_indices,  # returns (out, indices), as this does
    torch._C._nn.adaptive_max_pool2d: adaptive_max_pool2d_with_indices,
    **_ROUTES_3D,
}

__all__ = ["max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices",
           "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
           "max_pool3d", "max_pool3d_with_indices", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
           "adaptive_max_pool3d_with_indices"]
