"""Power-average pooling (LPPool), max unpooling and fractional max pooling. Their δ's reuse the pooling Functions' own formulas
(the average pool's window matrices, the max pool's scatter to the picked elements).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, _functorch_active, check, check_tensor
from .pooling import AvgPool, MaxPool, _MAX, _tuple


def _avg_adjoint(delta, x_shape, n, k, s, ceil_mode):
    """Bᵀ of the average pool (no padding, count_include_pad) applied to δ: AvgPool's backward formula."""
    ctx = SimpleNamespace(n=n, kernel_size=k, stride=s, padding=(0,) * n, count_include_pad=True,
                          divisor_override=None, x_shape=x_shape, adaptive=False)
    return AvgPool.backward(ctx, delta)[0]


class LPPool(DeltaFunction):
    """y = (K · A)^{1/p},  A = avg over the window of a^p  (K the window's size: y = (Σ_window a^p)^{1/p});
    p = ±∞: y = max (min) over the window of |a|.

    backward: δ_A = δ · (K/p) (K A)^{1/p − 1} where A ≠ 0 (0 where A = 0, as torch's relu of |A| gives);
    δ_a = Bᵀ δ_A ⊙ p a^{p−1}  (Bᵀ: the average pool's transpose).  p = ±∞: δ_a = sign(a) ⊙ δ routed to the
    element the window picked (the max pool's scatter).
    """

    @staticmethod
    def forward(x, p, n, k, s, ceil_mode):
        return getattr(F, f"lp_pool{n}d")(x, p, k if n > 1 else k[0], s if n > 1 else s[0], ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.p, ctx.n, ctx.k, ctx.s, ctx.ceil_mode = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        p, n, k, s = ctx.p, ctx.n, ctx.k, ctx.s
        if math.isinf(p):
            b = x.abs() if p > 0 else -x.abs()
            idx = _MAX[n](b, k, s, (0,) * n, (1,) * n, ctx.ceil_mode)[1]
            mctx = SimpleNamespace(saved_tensors=(idx,), n=n, x_shape=x.shape,
                                   overlap=any(ki > si for ki, si in zip(k, s)))
            g = MaxPool.backward(mctx, delta, None)[0]
            return g * x.sgn(), None, None, None, None, None
        K = math.prod(k)
        A = getattr(F, f"avg_pool{n}d")(x.pow(p), k, s, 0, ctx.ceil_mode)
        dA = torch.where(A != 0, delta * (K / p) * (K * A).pow(1.0 / p - 1), torch.zeros_like(A))
        bad = dA.isnan()
        # NaN windows (a^p of negatives, p fractional): NaN to their own elements only, as native's
        # window-by-window kernel spreads it (the separable products would smear it along rows). Under a
        # functorch transform (vmap) a tensor's value cannot steer Python: that path, always.
        if _functorch_active is None or _functorch_active() or bad.any():
            dq = _avg_adjoint(dA.masked_fill(bad, 0), x.shape, n, k, s, ctx.ceil_mode)
            reach = _avg_adjoint(bad.to(dA.dtype), x.shape, n, k, s, ctx.ceil_mode) > 0
            dq = dq.masked_fill(reach, float("nan"))
        else:
            dq = _avg_adjoint(dA, x.shape, n, k, s, ctx.ceil_mode)
        return dq * (p * x.pow(p - 1)), None, None, None, None, None


class MaxUnpool(DeltaFunction):
    """y = 0 everywhere except y[idx[j]] = a[j] (the inverse of a max pool's pick, at native's indices).

    backward: δ_a[j] = δ[idx[j]]  (a gather; the indices get no δ).
    """

    @staticmethod
    def forward(x, idx, n, out_size, stride, padding):
        if n == 3:
            return torch._C._nn.max_unpool3d(x, idx, out_size, stride, padding)
        if n == 1:
            return torch._C._nn.max_unpool2d(x.unsqueeze(-1), idx.unsqueeze(-1), (*out_size, 1)).squeeze(-1)
        return torch._C._nn.max_unpool2d(x, idx, out_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, idx, ctx.n = inputs[:3]
        ctx.save_for_backward(idx)
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, delta):
        (idx,) = ctx.saved_tensors
        n = ctx.n
        g = delta.flatten(-n).gather(-1, idx.flatten(-n))
        return g.view(ctx.x_shape), None, None, None, None, None


class FractionalMaxPool(DeltaFunction):
    """a[y] = max over the pseudo-random window(y) of a_prev (the windows from ``samples``, as native draws
    them; idx: the kernel's pick).

    backward: δ_prev[j] = Σ_{y : idx[y] = j} δ[y]  (the max pool's scatter; windows may overlap).
    """

    @staticmethod
    def forward(x, n, kernel_size, output_size, samples):
        fn = torch._C._nn.fractional_max_pool2d if n == 2 else torch._C._nn.fractional_max_pool3d
        return fn(x, kernel_size, output_size, samples)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.n = inputs[:2]
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1])
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, delta, _):
        if delta is None:
            return (None,) * 5
        mctx = SimpleNamespace(saved_tensors=ctx.saved_tensors, n=ctx.n, x_shape=ctx.x_shape, overlap=True)
        return MaxPool.backward(mctx, delta, None)[0], None, None, None, None


def _fractional(n, input, kernel_size, output_size, output_ratio, return_indices, _random_samples):
    op = f"fractional_max_pool{n}d"
    check_tensor(op, "input", input)
    check(input.dim() in (n + 1, n + 2), op, f"expected {n + 1}-D (unbatched) or {n + 2}-D input, got shape "
                                             f"{list(input.shape)}")
    if output_size is None and output_ratio is None:
        raise ValueError(f"torchbp.functional.{op}: requires specifying either an output_size or an output_ratio")
    k = _tuple(kernel_size, n, op, "kernel_size")
    if output_size is None:
        ratio = tuple(output_ratio) if isinstance(output_ratio, (tuple, list)) else (output_ratio,) * n
        check(len(ratio) == n, op, f"output_ratio must be a number or a tuple of {n}, got {output_ratio}")
        output_size = [int(input.size(-n + i) * ratio[i]) for i in range(n)]
    size = _tuple(tuple(output_size) if isinstance(output_size, (tuple, list)) else output_size, n, op,
                  "output_size")
    if _random_samples is None:  # drawn as native draws them: the same RNG state gives the same windows
        n_batch = 1 if input.dim() == n + 1 else input.size(0)
        _random_samples = torch.rand(n_batch, input.size(-n - 1), n, dtype=input.dtype, device=input.device)
    out, idx = FractionalMaxPool.apply(input, n, k, size, _random_samples)
    return (out, idx) if return_indices else out


def fractional_max_pool2d(input, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                          _random_samples=None):
    """δ twin of ``torch.nn.functional.fractional_max_pool2d``."""
    return _fractional(2, input, kernel_size, output_size, output_ratio, return_indices, _random_samples)


def fractional_max_pool3d(input, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                          _random_samples=None):
    """δ twin of ``torch.nn.functional.fractional_max_pool3d``."""
    return _fractional(3, input, kernel_size, output_size, output_ratio, return_indices, _random_samples)


def fractional_max_pool2d_with_indices(input, kernel_size, output_size=None, output_ratio=None,
                                       return_indices=False, _random_samples=None):
    """δ twin of ``F.fractional_max_pool2d_with_indices`` (always returns the indices, as it does)."""
    return _fractional(2, input, kernel_size, output_size, output_ratio, True, _random_samples)


def fractional_max_pool3d_with_indices(input, kernel_size, output_size=None, output_ratio=None,
                                       return_indices=False, _random_samples=None):
    """δ twin of ``F.fractional_max_pool3d_with_indices`` (always returns the indices, as it does)."""
    return _fractional(3, input, kernel_size, output_size, output_ratio, True, _random_samples)


def _lp(n, input, norm_type, kernel_size, stride, ceil_mode):
    op = f"lp_pool{n}d"
    check_tensor(op, "input", input)
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    k = _tuple(kernel_size, n, op, "kernel_size")
    s = k if stride is None else _tuple(stride, n, op, "stride")
    return LPPool.apply(input, float(norm_type), n, k, s, bool(ceil_mode))


def lp_pool1d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """δ twin of ``torch.nn.functional.lp_pool1d``."""
    return _lp(1, input, norm_type, kernel_size, stride, ceil_mode)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """δ twin of ``torch.nn.functional.lp_pool2d``."""
    return _lp(2, input, norm_type, kernel_size, stride, ceil_mode)


def lp_pool3d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """δ twin of ``torch.nn.functional.lp_pool3d``."""
    return _lp(3, input, norm_type, kernel_size, stride, ceil_mode)


def _unpool(n, input, indices, kernel_size, stride, padding, output_size):
    op = f"max_unpool{n}d"
    check_tensor(op, "input", input)
    check_tensor(op, "indices", indices)
    k = _tuple(kernel_size, n, op, "kernel_size")
    s = k if stride is None else _tuple(stride, n, op, "stride")
    p = _tuple(padding, n, op, "padding")
    size = tuple(F._unpool_output_size(input, list(k), list(s), list(p), output_size))
    return MaxUnpool.apply(input, indices, n, size, s, p)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """δ twin of ``torch.nn.functional.max_unpool1d``."""
    return _unpool(1, input, indices, kernel_size, stride, padding, output_size)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """δ twin of ``torch.nn.functional.max_unpool2d``."""
    return _unpool(2, input, indices, kernel_size, stride, padding, output_size)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """δ twin of ``torch.nn.functional.max_unpool3d``."""
    return _unpool(3, input, indices, kernel_size, stride, padding, output_size)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.lp_pool1d: lp_pool1d, F.lp_pool2d: lp_pool2d, F.lp_pool3d: lp_pool3d,
          F.max_unpool1d: max_unpool1d, F.max_unpool2d: max_unpool2d, F.max_unpool3d: max_unpool3d,
          F.fractional_max_pool2d: fractional_max_pool2d, F.fractional_max_pool3d: fractional_max_pool3d,
          F.fractional_max_pool2d_with_indices: fractional_max_pool2d_with_indices,
          F.fractional_max_pool3d_with_indices: fractional_max_pool3d_with_indices}

__all__ = ["lp_pool1d", "lp_pool2d", "lp_pool3d", "max_unpool1d", "max_unpool2d", "max_unpool3d",
           "fractional_max_pool2d", "fractional_max_pool3d", "fractional_max_pool2d_with_indices",
           "fractional_max_pool3d_with_indices"]
