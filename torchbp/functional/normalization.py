"""Normalization layers: z = γ ⊙ x̂ + β with x̂ = (x − μ) ⊙ r, r = 1/√(σ² + ε).

μ and σ² are taken over a set of dims (the batch and spatial dims for batch_norm, the trailing dims
for layer_norm, each group's channels and spatial dims for group_norm; rms_norm has μ = 0 and
σ² = mean(x²)). With δ = ∂J/∂z from the layer above, g = δ ⊙ γ and M the number of values averaged:

  δ_x = r ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))     (μ, σ² are functions of x: the two mean terms)
  ∂J/∂γ = Σ δ ⊙ x̂,   ∂J/∂β = Σ δ               (summed over every dim γ is broadcast along)

With fixed statistics (batch_norm in eval mode) μ, σ² do not depend on x and δ_x = r ⊙ g.

Forward uses the native forward kernels (native_layer_norm, native_group_norm, batch_norm) for the
output, the saved μ, r and BatchNorm's running-stats update, so both are native's bits. Backward is the
formula above in plain ops, in float32 for float16 / bfloat16 tensors (as the native kernels
accumulate). The saved μ, r are constants to autograd, so under ``create_graph`` backward recomputes
them from x with differentiable ops: double backward then differentiates through the statistics too.

Backward is ``_plain``, the formula as it stands, out of place (it runs under create_graph and vmap).
In ordinary training the same formula runs expanded and in place (``fastpath.norm``: fewer passes over
the data and fewer allocations), tested against ``_plain``.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ._common import FP32_CUDA, DeltaFunction, _autocast_state, apply, check, check_tensor, fail
from .fastpath.norm import cells_in_place, in_place_ok as _in_place_ok, rows_in_place

_LOW = (torch.float16, torch.bfloat16)


def _opmath(*ts):
    """float16 / bfloat16 tensors in float32, the others unchanged (None stays None)."""
    return tuple(t.float() if t is not None and t.dtype in _LOW else t for t in ts)


def _inputs(x0, w0, delta):
    """x, γ, δ for backward, and whether it may work in place (``fastpath.norm.in_place_ok``). The plain
    path takes them in float32 for float16 / bfloat16; the in-place path only γ: its first ops promote x
    and δ to float32 as they read them (a float32 P, float32 sums), without full-size float32 copies."""
    fast = _in_place_ok(delta)
    if fast:
        return x0, _opmath(w0)[0], delta, True
    return (*_opmath(x0, w0, delta), False)


def _stats(x, red, mean, rstd, eps, fixed=False):
    """μ and r broadcastable against ``x`` (reduced over the dims ``red``): the saved ones, constants to
    autograd; but when backward is itself differentiated (create_graph turns grad mode on) and they are
    functions of x (not ``fixed`` running statistics), recomputed from x so that double backward sees
    that dependence. ``mean`` None: rms_norm (μ ≡ 0, σ² = mean(x²))."""
    if torch.is_grad_enabled() and not fixed:
        if mean is None:
            return None, x.pow(2).mean(red, keepdim=True).add(eps).rsqrt()
        var, mu = torch.var_mean(x, red, correction=0, keepdim=True)
        return mu, (var + eps).rsqrt()
    stat = [1 if d in red else n for d, n in enumerate(x.shape)]
    dt = torch.float32 if x.dtype in _LOW else x.dtype
    return (mean.reshape(stat).to(dt) if mean is not None else None), rstd.reshape(stat).to(dt)


def _plain(delta, x, mu, r, w, red, pdims, training, need_x, need_w, need_b):
    """The module docstring's formula as written, out of place, so it is differentiable (double backward)
    and vmappable. x, δ, μ, r and γ broadcast together; μ, r reduced over ``red``, γ broadcast along ``pdims``."""
    xhat = x * r if mu is None else (x - mu) * r
    grad_x = None
    if need_x:
        g = delta if w is None else delta * w
        if not training:  # fixed statistics
            grad_x = r * g
        else:
            t = g if mu is None else g - g.mean(red, keepdim=True)
            grad_x = r * (t - xhat * (g * xhat).mean(red, keepdim=True))
    gw = (delta * xhat).sum(pdims) if need_w else None
    gb = delta.sum(pdims) if need_b else None
    return grad_x, gw, gb


def _backward(ctx, delta, x0, w0, mean, rstd, view, wview, red, pdims, cell, pshape, training, needs):
    """Every normalization's backward: x and δ seen as ``view``, γ as ``wview``; μ, r reduced over ``red``,
    γ broadcast along ``pdims``; ``cell`` the dims along which every factor is constant (``cells_in_place``),
    or None for rows of (R, D) (``rows_in_place``). ``_plain`` where a graph is recorded or vmap is active.
    Returns δ_x, ∂J/∂γ, ∂J/∂β (γ, β of shape ``pshape``), None where not needed."""
    need_x, need_w, need_b = needs
    x, w, delta, fast = _inputs(x0, w0, delta)
    x, delta = x.reshape(view), delta.reshape(view)
    w = w.reshape(wview) if w is not None else None
    mu, r = _stats(x, red, mean, rstd, ctx.eps, fixed=not training)
    if not fast:
        grad_x, gw, gb = _plain(delta, x, mu, r, w, red, pdims, training, need_x, need_w, need_b)
    elif cell is None:
        grad_x, gw, gb = rows_in_place(delta, x, mu, r, w, need_x, need_w, need_b)
    else:
        grad_x, gw, gb = cells_in_place(delta, x, mu, r, w, red, pdims, cell, training, need_x, need_w, need_b)
    return (grad_x.reshape(x0.shape).to(x0.dtype) if need_x else None,
            gw.reshape(pshape).to(w0.dtype) if need_w else None,
            gb.reshape(pshape).to(ctx.b_dtype) if need_b else None)


def _check(cond, op, message):
    """``check`` with the message (a callable) built only on failure: these run on every call."""
    if not cond:
        fail(op, message())


def _check_2d(op, input):
    _check(input.dim() >= 2, op, lambda: f"input must have at least 2 dims (N, C, *), got shape {list(input.shape)}")


def _check_params(op, input, **params):
    """Tensors, one device, and the dtype mixes native allows: equal dtypes, or float32 parameters with
    a float16 / bfloat16 input (native's mixed-type kernels), or anything autocast will cast."""
    check_tensor(op, "input", input)
    _check(input.is_floating_point(), op, lambda: f"input must be floating point, got {input.dtype}")
    autocast = _autocast_state(input.device.type) is not None
    for k, v in params.items():
        if v is None:
            continue
        check_tensor(op, k, v)
        _check(v.device == input.device, op,
               lambda: f"{k} is on {v.device} but input is on {input.device}; move them to one device")
        _check(v.dtype == input.dtype or autocast or (input.dtype in _LOW and v.dtype == torch.float32), op,
               lambda: f"{k} has dtype {v.dtype} but input has dtype {input.dtype}; cast one of them "
                       "(parameters may be float32 with a float16/bfloat16 input)")


# --- batch_norm ----------------------------------------------------------------------------------

def _native_batch_norm(x, w, b, rm, rv, training, momentum, eps):
    """Output, saved μ and r, through the kernel torch.batch_norm itself picks (cuDNN / MIOpen / native),
    so the output and the running-stats update are native's bits on every device."""
    if hasattr(torch, "_batch_norm_impl_index"):
        out, mean, invstd, _, _ = torch._batch_norm_impl_index(x, w, b, rm, rv, training, momentum, eps,
                                                                torch.backends.cudnn.enabled)
        return out, mean, invstd
    return torch.native_batch_norm(x, w, b, rm, rv, training, momentum, eps)


class BatchNorm(DeltaFunction):
    """z = γ ⊙ x̂ + β per channel (dim 1), μ, σ² over the batch and spatial dims.

    train:  δ_x = r/N ⊙ (N·g − Σg − x̂ ⊙ Σ(g ⊙ x̂)),  g = δ ⊙ γ   (the module docstring's formula)
    eval:   δ_x = r ⊙ g, with μ, r from the running statistics
    ∂J/∂γ = Σ δ ⊙ x̂,  ∂J/∂β = Σ δ
    """

    @staticmethod
    def forward(x, w, b, rm, rv, training, momentum, eps):
        out, mean, invstd = _native_batch_norm(x, w, b, rm, rv, training, momentum, eps)
        if not training:  # the statistics used are the running ones (copied: the buffers change later)
            mean, invstd = rm.clone(), (rv.to(torch.promote_types(rv.dtype, torch.float32)) + eps).rsqrt()
        return out, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, rm, rv, training, momentum, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.set_materialize_grads(False)  # (μ, r carry no δ: no zero tensors made for them)
        ctx.save_for_backward(x, w, mean, invstd)
        ctx.training, ctx.eps = training, eps
        ctx.b_dtype = b.dtype if b is not None else None

    @staticmethod
    def backward(ctx, delta, _dmean, _dinvstd):
        return _per_channel_backward(ctx, delta, (0, 2)) + (None,) * 5


def _per_channel_backward(ctx, delta, red):
    """batch_norm's and instance_norm's backward: x seen as (n, channel, spatial), γ per channel, μ and r
    reduced over ``red`` ((0, 2): the batch and spatial dims; (2,): each instance's spatial dims)."""
    x0, w0, mean, invstd = ctx.saved_tensors
    if delta is None:  # no δ reached the output (grads are not materialized: see BatchNorm.setup_context)
        return None, None, None
    N, C = x0.shape[:2]
    view = (N, C, math.prod(x0.shape[2:]))  # (n, channel, spatial); no -1: N may be 0
    return _backward(ctx, delta, x0, w0, mean, invstd, view, (1, C, 1), red, (0, 2), red, (C,), ctx.training,
                     ctx.needs_input_grad[:3])


def _raise_value(op, cond, message):
    if not cond:  # where native raises ValueError, so do we (callers catch by type)
        raise ValueError(f"torchbp.functional.{op}: {message()}")


def _check_channels(op, input, weight, bias, running_mean, running_var):
    """batch_norm's and instance_norm's checks: per-channel parameters and statistics of input.shape[1]."""
    _check_params(op, input, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _check_2d(op, input)
    C = input.shape[1]
    for k, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        _check(v is None or v.numel() == C, op, lambda: f"{k} must have {C} elements (the channels, "
                                                        f"input.shape[1]), got shape {list(v.shape)}")
    return C


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """δ twin of ``torch.nn.functional.batch_norm`` (running statistics updated in place as native)."""
    op = "batch_norm"
    if input.dim() == 1 and input.numel() == 0:  # native hands back an empty copy: nothing to normalize
        return input.clone()
    C = _check_channels(op, input, weight, bias, running_mean, running_var)
    check(training or (running_mean is not None and running_var is not None), op,
          "running_mean and running_var must be given in evaluation mode (training=False)")
    if training:
        _raise_value(op, input.numel() // C != 1, lambda: "Expected more than 1 value per channel when training, "
                                                          f"got input size {list(input.shape)}")
    _raise_value(op, eps > 0 if training else eps >= 0,
                 lambda: f"eps must be {'positive during training' if training else 'non-negative'}, got {eps}")
    out, _, _ = BatchNorm.apply(input, weight, bias, running_mean, running_var, bool(training),
                                float(momentum) if momentum is not None else 0.0, float(eps))
    return out


# --- layer_norm, rms_norm ------------------------------------------------------------------------

def _shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(n) for n in normalized_shape)


def _check_trailing(op, input, shape, **params):
    n = len(shape)
    _check(n >= 1 and input.dim() >= n and tuple(input.shape[input.dim() - n:]) == shape, op,
           lambda: f"normalized_shape={list(shape)} must match the trailing dims of input, got input of shape "
                   f"{list(input.shape)}")
    for k, v in params.items():
        _check(v is None or tuple(v.shape) == shape, op,
               lambda: f"{k} must have shape {list(shape)} (normalized_shape), got {list(v.shape)}")


def _save_stats(ctx, inputs, output):
    """layer_norm's and group_norm's context, inputs (x, arg, w, b, eps) and outputs (out, mean, rstd):
    x, w and the forward's statistics saved, eps and b's dtype kept. Returns ``arg`` (shape or groups)."""
    x, arg, w, b, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # (μ, r carry no δ: no zero tensors made for them)
    ctx.save_for_backward(x, w, mean, rstd)
    ctx.eps, ctx.b_dtype = eps, (b.dtype if b is not None else None)
    return arg


class LayerNorm(DeltaFunction):
    """z = γ ⊙ x̂ + β, μ, σ² over the trailing ``len(normalized_shape)`` dims.

    δ_x = r ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)),  g = δ ⊙ γ;   ∂J/∂γ = Σ δ ⊙ x̂,  ∂J/∂β = Σ δ
    """

    @staticmethod
    def forward(x, shape, w, b, eps):
        out, mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = _save_stats(ctx, inputs, output)

    @staticmethod
    def backward(ctx, delta, _dmean, _drstd):
        return _affine_backward(ctx, delta, _rows_geometry)


def _rows_geometry(ctx, x0):
    """layer_norm's and rms_norm's view of x: (rows, normalized values), statistics per row."""
    D = math.prod(ctx.shape)
    R = math.prod(x0.shape[:x0.dim() - len(ctx.shape)])
    return (R, D), (D,), (1,), (0,), None, ctx.shape


def _affine_backward(ctx, delta, geometry):
    """layer_norm's and group_norm's backward (forward's inputs: x, shape or groups, γ, β, eps), with x seen
    as ``geometry(ctx, x)`` says (``_backward``'s view, wview, red, pdims, cell, pshape)."""
    x0, w0, mean, rstd = ctx.saved_tensors
    need_x, _, need_w, need_b, _ = ctx.needs_input_grad
    if delta is None:  # no δ reached the output (grads are not materialized: see _save_stats)
        return None, None, None, None, None
    gx, gw, gb = _backward(ctx, delta, x0, w0, mean, rstd, *geometry(ctx, x0), True, (need_x, need_w, need_b))
    return gx, None, gw, gb, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """δ twin of ``torch.nn.functional.layer_norm``."""
    op = "layer_norm"
    _check_params(op, input, weight=weight, bias=bias)
    shape = _shape(normalized_shape)
    _check_trailing(op, input, shape, weight=weight, bias=bias)
    out, _, _ = apply(LayerNorm, FP32_CUDA, input, shape, weight, bias, float(eps))
    return out


class RMSNorm(DeltaFunction):
    """z = γ ⊙ x̂, x̂ = x ⊙ r, r = 1/√(mean(x²) + ε) over the trailing dims (μ ≡ 0).

    δ_x = r ⊙ (g − x̂ ⊙ mean(g ⊙ x̂)),  g = δ ⊙ γ;   ∂J/∂γ = Σ δ ⊙ x̂
    """

    @staticmethod
    def forward(x, shape, w, eps):
        # torch's rms_norm composite, op for op (so the output is native's bits): float16/bfloat16 in float32
        dims = tuple(range(-len(shape), 0))
        (xf,) = _opmath(x)
        rstd = xf.pow(2).mean(dims, keepdim=True).add_(eps).rsqrt()
        out = xf * rstd
        if w is not None:
            out = out * w
        return out.type_as(x).contiguous(), rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, shape, w, eps = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, w, output[1])
        ctx.shape, ctx.eps = shape, eps

    @staticmethod
    def backward(ctx, delta, _drstd):
        x0, w0, rstd = ctx.saved_tensors
        need_x, _, need_w, _ = ctx.needs_input_grad
        gx, gw, _ = _backward(ctx, delta, x0, w0, None, rstd, *_rows_geometry(ctx, x0), True, (need_x, need_w, False))
        return gx, None, gw, None


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """δ twin of ``torch.nn.functional.rms_norm``; ``eps=None`` is the machine epsilon of the compute
    dtype (float32 for float16/bfloat16 inputs), as torch has it."""
    op = "rms_norm"
    check_tensor(op, "input", input)
    _check(input.is_floating_point(), op, lambda: f"input must be floating point, got {input.dtype}")
    check(weight is None or (isinstance(weight, torch.Tensor) and weight.device == input.device), op,
          "weight must be a Tensor on input's device")
    shape = _shape(normalized_shape)
    _check_trailing(op, input, shape, weight=weight)
    if eps is None:
        eps = torch.finfo(torch.float32 if input.dtype in _LOW else input.dtype).eps
    out, _ = RMSNorm.apply(input, shape, weight, float(eps))
    return out


# --- group_norm ----------------------------------------------------------------------------------

class GroupNorm(DeltaFunction):
    """z = γ ⊙ x̂ + β per channel, μ, σ² over each group of C/G channels and the spatial dims.

    With x seen as (N, G, C/G·HW):  δ_x = r ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)),  g = δ ⊙ γ;
    ∂J/∂γ = Σ_{n, spatial} δ ⊙ x̂,  ∂J/∂β = Σ_{n, spatial} δ
    """

    @staticmethod
    def forward(x, G, w, b, eps):
        N, C = x.shape[:2]
        # native_group_norm wants a dense input (torch.group_norm makes it contiguous first, likewise)
        cl = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        if not x.is_contiguous() and not (cl and x.is_contiguous(memory_format=cl)):
            x = x.contiguous()
        # HxW from the shape: with N = 0 it is not numel / (N·C)
        out, mean, rstd = torch.native_group_norm(x, w, b, N, C, math.prod(x.shape[2:]), G, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.G = _save_stats(ctx, inputs, output)

    @staticmethod
    def backward(ctx, delta, _dmean, _drstd):
        return _affine_backward(ctx, delta, _groups_geometry)


def _groups_geometry(ctx, x0):
    """group_norm's view of x: (n, group, channel in the group, spatial), statistics per (n, group)."""
    N, C, G = x0.shape[0], x0.shape[1], ctx.G
    return (N, G, C // G, math.prod(x0.shape[2:])), (1, G, C // G, 1), (2, 3), (0, 3), (3,), (C,)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """δ twin of ``torch.nn.functional.group_norm``."""
    op = "group_norm"
    _check_params(op, input, weight=weight, bias=bias)
    _check_2d(op, input)
    C = input.shape[1]
    _check(isinstance(num_groups, numbers.Integral) and num_groups > 0 and C % num_groups == 0, op,
           lambda: f"the {C} channels (input.shape[1]) must be divisible by num_groups={num_groups}")
    for k, v in (("weight", weight), ("bias", bias)):
        _check(v is None or tuple(v.shape) == (C,), op,
               lambda: f"{k} must have shape [{C}] (the channels), got {list(v.shape)}")
    _raise_value(op, input.shape[0] * C // num_groups * math.prod(input.shape[2:]) != 1,
                 lambda: f"Expected more than 1 value per group, got input size {list(input.shape)} "
                         f"and num_groups={num_groups}")
    out, _, _ = apply(GroupNorm, FP32_CUDA, input, int(num_groups), weight, bias, float(eps))
    return out


# --- instance_norm -------------------------------------------------------------------------------

class InstanceNorm(DeltaFunction):
    """z = γ ⊙ x̂ + β per channel, μ, σ² over each (sample, channel)'s spatial dims: batch_norm of x seen as
    (1, N·C, *), with γ, β and the running statistics repeated N times, as torch computes it.

    use_input_stats:  δ_x = r ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)), means over the spatial dims, g = δ ⊙ γ
    running statistics (eval):  δ_x = r ⊙ g (μ, σ² do not depend on x: an affine map per channel)
    ∂J/∂γ = Σ_{n, spatial} δ ⊙ x̂,  ∂J/∂β = Σ_{n, spatial} δ
    The running statistics become the mean over the batch of the N per-instance updates (native's bits).
    """

    @staticmethod
    def forward(x, w, b, rm, rv, use_input_stats, momentum, eps):
        N, C = x.shape[:2]
        rm_, rv_ = (t.repeat(N) if t is not None else None for t in (rm, rv))
        out, mean, invstd = BatchNorm.forward(x.contiguous().view(1, N * C, *x.shape[2:]),
                                              *(t.repeat(N) if t is not None else None for t in (w, b)),
                                              rm_, rv_, use_input_stats, momentum, eps)
        for t, t_ in ((rm, rm_), (rv, rv_)):
            if t is not None:
                t.copy_(t_.view(N, C).mean(0))
        return out.view(x.shape), mean, invstd

    setup_context = staticmethod(BatchNorm.setup_context)

    @staticmethod
    def backward(ctx, delta, _dmean, _dinvstd):
        return _per_channel_backward(ctx, delta, (2,)) + (None,) * 5


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """δ twin of ``torch.nn.functional.instance_norm`` (running statistics updated in place as native)."""
    op = "instance_norm"
    _check_channels(op, input, weight, bias, running_mean, running_var)
    _raise_value(op, (running_mean is None) == (running_var is None),
                 lambda: "running_mean and running_var must either both be None or neither be None")
    check(use_input_stats or running_mean is not None, op,
          "running_mean and running_var must be given when use_input_stats is False")
    if use_input_stats:
        _raise_value(op, math.prod(input.shape[2:]) != 1, lambda: "Expected more than 1 spatial element when "
                                                                   f"training, got input size {list(input.shape)}")
    out, _, _ = InstanceNorm.apply(input, weight, bias, running_mean, running_var, bool(use_input_stats),
                                   float(momentum) if momentum is not None else 0.0, float(eps))
    return out


# torch.layer_norm / torch.group_norm take a trailing cudnn flag; torch.batch_norm has its own order
def _torch_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return layer_norm(input, normalized_shape, weight, bias, eps)


def _torch_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    return group_norm(input, num_groups, weight, bias, eps)


def _torch_instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
                         cudnn_enabled):
    return instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def _torch_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled):
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


ROUTES = {F.batch_norm: batch_norm, torch.batch_norm: _torch_batch_norm,
          F.layer_norm: layer_norm, torch.layer_norm: _torch_layer_norm,
          F.group_norm: group_norm, torch.group_norm: _torch_group_norm,
          F.instance_norm: instance_norm, torch.instance_norm: _torch_instance_norm}
if hasattr(F, "rms_norm"):  # torch >= 2.4
    ROUTES[F.rms_norm] = rms_norm
    if hasattr(torch, "rms_norm"):
        ROUTES[torch.rms_norm] = rms_norm

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"]
