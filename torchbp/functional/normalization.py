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
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ._common import FP32_CUDA, DeltaFunction, _autocast_state, apply, check, check_tensor

_LOW = (torch.float16, torch.bfloat16)


def _opmath(*ts):
    """float16 / bfloat16 tensors in float32, the others unchanged (None stays None)."""
    return tuple(t.float() if t is not None and t.dtype in _LOW else t for t in ts)


def _xhat(x, mu, r):
    """x̂ = (x − μ) ⊙ r."""
    return (x - mu).mul_(r)  # in place on our own temporary: one allocation, not two


def _delta_x(g, k, xhat, a, b):
    """δ_x = g ⊙ k + x̂ ⊙ a + b (k, a, b small and broadcast; binary ops, which stay vectorised with a
    broadcast operand on CPU where addcmul often does not; in place on our own temporaries).

    Each op writes δ_x = r ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) this way, with the small factors folded
    first: k = r (times γ where γ is constant over the averaged dims), a = −r·mean(g ⊙ x̂),
    b = −r·mean(g); the means come from sums computed once and shared with ∂J/∂γ, ∂J/∂β.
    """
    t = xhat * a
    t += b
    t += g * k
    return t


def _row_means(g, dxh, w, stat):
    """mean(g) and mean(g ⊙ x̂) over the trailing (normalized) dims, g = δ ⊙ γ; the second as the
    matrix-vector product (δ ⊙ x̂) γ, reusing δ ⊙ x̂ (needed for ∂J/∂γ anyway)."""
    D = g.numel() // max(math.prod(stat), 1)
    m1 = g.reshape(-1, D).mean(1).reshape(stat)
    m2 = (dxh.reshape(-1, D) @ w.reshape(D)) / D if w is not None else dxh.reshape(-1, D).mean(1)
    return m1, m2.reshape(stat)


def _sum_lead(t, n_trailing):
    """Sum ``t`` over its leading dims, keeping the last ``n_trailing`` (a parameter's shape)."""
    lead = t.dim() - n_trailing
    return t.sum(tuple(range(lead))) if lead else t


def _check_params(op, input, **params):
    """Tensors, one device, and the dtype mixes native allows: equal dtypes, or float32 parameters with
    a float16 / bfloat16 input (native's mixed-type kernels), or anything autocast will cast."""
    check_tensor(op, "input", input)
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    autocast = _autocast_state(input.device.type) is not None
    for k, v in params.items():
        if v is None:
            continue
        check_tensor(op, k, v)
        check(v.device == input.device, op, f"{k} is on {v.device} but input is on {input.device}; "
              "move them to one device")
        check(v.dtype == input.dtype or autocast or (input.dtype in _LOW and v.dtype == torch.float32), op,
              f"{k} has dtype {v.dtype} but input has dtype {input.dtype}; cast one of them "
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
        ctx.save_for_backward(x, w, mean, invstd)
        ctx.training, ctx.eps = training, eps
        ctx.b_dtype = b.dtype if b is not None else None

    @staticmethod
    def backward(ctx, delta, _dmean, _dinvstd):
        x0, w0, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x, w, delta = _opmath(x0, w0, delta)
        dims = (0,) + tuple(range(2, x.dim()))
        stat = (1, -1) + (1,) * (x.dim() - 2)
        if ctx.training and torch.is_grad_enabled():  # double backward: statistics as functions of x
            var, mu = torch.var_mean(x, dims, correction=0, keepdim=True)
            r = (var + ctx.eps).rsqrt()
        else:
            mu, r = mean.reshape(stat).to(x.dtype), invstd.reshape(stat).to(x.dtype)
        xhat = _xhat(x, mu, r) if need_w or (need_x and ctx.training) else None
        # γ is constant over the averaged dims: mean(g) = γ·Σδ/n and mean(g ⊙ x̂) = γ·Σδx̂/n, and
        # those two sums are ∂J/∂β and ∂J/∂γ themselves
        s2 = (delta * xhat).sum(dims) if need_w or (need_x and ctx.training) else None
        s1 = delta.sum(dims) if need_b or (need_x and ctx.training) else None
        grad_x = None
        if need_x:
            k = r * w.reshape(stat) if w is not None else r
            if ctx.training:
                n = x.numel() // x.shape[1]
                grad_x = _delta_x(delta, k, xhat, -k * s2.reshape(stat) / n, -k * s1.reshape(stat) / n)
            else:
                grad_x = delta * k
            grad_x = grad_x.to(x0.dtype)
        gw = s2.to(w0.dtype) if need_w else None
        gb = s1.to(ctx.b_dtype) if need_b else None
        return grad_x, gw, gb, None, None, None, None, None


def _raise_value(op, cond, message):
    if not cond:  # where native raises ValueError, so do we (callers catch by type)
        raise ValueError(f"torchbp.functional.{op}: {message}")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """δ twin of ``torch.nn.functional.batch_norm`` (running statistics updated in place as native)."""
    op = "batch_norm"
    _check_params(op, input, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    check(input.dim() >= 2, op, f"input must have at least 2 dims (N, C, *), got shape {list(input.shape)}")
    C = input.shape[1]
    for k, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        check(v is None or v.numel() == C, op, f"{k} must have {C} elements (the channels, input.shape[1]), "
              f"got shape {list(v.shape) if v is not None else None}")
    check(training or (running_mean is not None and running_var is not None), op,
          "running_mean and running_var must be given in evaluation mode (training=False)")
    if training:
        _raise_value(op, input.numel() // C != 1,
                     f"Expected more than 1 value per channel when training, got input size {list(input.shape)}")
    _raise_value(op, eps > 0 if training else eps >= 0,
                 f"eps must be {'positive during training' if training else 'non-negative'}, got {eps}")
    out, _, _ = BatchNorm.apply(input, weight, bias, running_mean, running_var, bool(training),
                                float(momentum) if momentum is not None else 0.0, float(eps))
    return out


# --- layer_norm, rms_norm ------------------------------------------------------------------------

def _shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(n) for n in normalized_shape)


def _check_trailing(op, input, shape, **params):
    check(len(shape) >= 1 and input.dim() >= len(shape) and tuple(input.shape[input.dim() - len(shape):]) == shape,
          op, f"normalized_shape={list(shape)} must match the trailing dims of input, got input of shape "
          f"{list(input.shape)}")
    for k, v in params.items():
        check(v is None or tuple(v.shape) == shape, op,
              f"{k} must have shape {list(shape)} (normalized_shape), "
              f"got {list(v.shape) if v is not None else None}")


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
        x, shape, w, b, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.shape, ctx.eps = shape, eps
        ctx.b_dtype = b.dtype if b is not None else None

    @staticmethod
    def backward(ctx, delta, _dmean, _drstd):
        x0, w0, mean, rstd = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        x, w, delta = _opmath(x0, w0, delta)
        dims = tuple(range(-len(ctx.shape), 0))
        stat = x.shape[:x.dim() - len(ctx.shape)] + (1,) * len(ctx.shape)
        if torch.is_grad_enabled():  # double backward: statistics as functions of x
            var, mu = torch.var_mean(x, dims, correction=0, keepdim=True)
            r = (var + ctx.eps).rsqrt()
        else:
            mu, r = mean.reshape(stat).to(x.dtype), rstd.reshape(stat).to(x.dtype)
        xhat = _xhat(x, mu, r)
        dxh = delta * xhat if need_x or need_w else None
        grad_x = None
        if need_x:
            g = delta * w if w is not None else delta
            m1, m2 = _row_means(g, dxh, w, stat)
            grad_x = _delta_x(g, r, xhat, -r * m2, -r * m1).to(x0.dtype)
        gw = _sum_lead(dxh, len(ctx.shape)).to(w0.dtype) if need_w else None
        gb = _sum_lead(delta, len(ctx.shape)).to(ctx.b_dtype) if need_b else None
        return grad_x, None, gw, gb, None


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
        x, w, delta = _opmath(x0, w0, delta)
        dims = tuple(range(-len(ctx.shape), 0))
        if torch.is_grad_enabled():  # double backward: r as a function of x
            r = x.pow(2).mean(dims, keepdim=True).add(ctx.eps).rsqrt()
        else:
            r = rstd.to(x.dtype)
        xhat = x * r
        dxh = delta * xhat
        grad_x = None
        if need_x:  # μ ≡ 0: no mean(g) term
            g = delta * w if w is not None else delta
            m2 = _row_means(g, dxh, w, r.shape)[1]
            grad_x = (xhat * (-r * m2)).add_(g * r).to(x0.dtype)
        gw = _sum_lead(dxh, len(ctx.shape)).to(w0.dtype) if need_w else None
        return grad_x, None, gw, None


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """δ twin of ``torch.nn.functional.rms_norm``; ``eps=None`` is the machine epsilon of the compute
    dtype (float32 for float16/bfloat16 inputs), as torch has it."""
    op = "rms_norm"
    check_tensor(op, "input", input)
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
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
        out, mean, rstd = torch.native_group_norm(x, w, b, N, C, x.numel() // max(N * C, 1), G, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, G, w, b, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.G, ctx.eps = G, eps
        ctx.b_dtype = b.dtype if b is not None else None

    @staticmethod
    def backward(ctx, delta, _dmean, _drstd):
        x0, w0, mean, rstd = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        x, w, delta = _opmath(x0, w0, delta)
        N, C, G = x.shape[0], x.shape[1], ctx.G
        xg = x.reshape(N, G, C // G, -1)  # (n, group, channel in the group, spatial)
        if torch.is_grad_enabled():  # double backward: statistics as functions of x
            var, mu = torch.var_mean(xg, (2, 3), correction=0, keepdim=True)
            r = (var + ctx.eps).rsqrt()
        else:
            mu, r = mean.reshape(N, G, 1, 1).to(x.dtype), rstd.reshape(N, G, 1, 1).to(x.dtype)
        xhat = _xhat(xg, mu, r)
        dg = delta.reshape(xg.shape)
        # per-(n, channel) sums Σδ, Σδx̂ give ∂J/∂β, ∂J/∂γ and, weighted by γ, the group means
        s1, s2 = dg.sum(3), (dg * xhat).sum(3)
        grad_x = None
        if need_x:
            wc = w.reshape(1, G, C // G) if w is not None else torch.ones_like(s1[:1])
            M = xg.shape[2] * xg.shape[3]
            m1 = (s1 * wc).sum(2).reshape(N, G, 1, 1) / M
            m2 = (s2 * wc).sum(2).reshape(N, G, 1, 1) / M
            grad_x = _delta_x(dg, r * wc.unsqueeze(3), xhat, -r * m2, -r * m1).reshape(x.shape).to(x0.dtype)
        gw = s2.sum(0).reshape(C).to(w0.dtype) if need_w else None
        gb = s1.sum(0).reshape(C).to(ctx.b_dtype) if need_b else None
        return grad_x, None, gw, gb, None


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """δ twin of ``torch.nn.functional.group_norm``."""
    op = "group_norm"
    _check_params(op, input, weight=weight, bias=bias)
    check(input.dim() >= 2, op, f"input must have at least 2 dims (N, C, *), got shape {list(input.shape)}")
    C = input.shape[1]
    check(isinstance(num_groups, numbers.Integral) and num_groups > 0 and C % num_groups == 0, op,
          f"the {C} channels (input.shape[1]) must be divisible by num_groups={num_groups}")
    for k, v in (("weight", weight), ("bias", bias)):
        check(v is None or tuple(v.shape) == (C,), op,
              f"{k} must have shape [{C}] (the channels), got {list(v.shape) if v is not None else None}")
    _raise_value(op, input.shape[0] * C // num_groups * math.prod(input.shape[2:]) != 1,
                 f"Expected more than 1 value per group, got input size {list(input.shape)} "
                 f"and num_groups={num_groups}")
    out, _, _ = apply(GroupNorm, FP32_CUDA, input, int(num_groups), weight, bias, float(eps))
    return out


# torch.layer_norm / torch.group_norm take a trailing cudnn flag; torch.batch_norm has its own order
def _torch_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return layer_norm(input, normalized_shape, weight, bias, eps)


def _torch_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    return group_norm(input, num_groups, weight, bias, eps)


def _torch_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled):
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


ROUTES = {F.batch_norm: batch_norm, torch.batch_norm: _torch_batch_norm,
          F.layer_norm: layer_norm, torch.layer_norm: _torch_layer_norm,
          F.group_norm: group_norm, torch.group_norm: _torch_group_norm}
if hasattr(F, "rms_norm"):  # torch >= 2.4
    ROUTES[F.rms_norm] = rms_norm
    if hasattr(torch, "rms_norm"):
        ROUTES[torch.rms_norm] = rms_norm

__all__ = ["batch_norm", "layer_norm", "group_norm", "rms_norm"]
