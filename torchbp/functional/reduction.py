"""Reductions: sum, mean, var, std, norm, amax/amin, max/min along a dim, logsumexp, cumsum, prod.

out = r(x) over some dims; δ_x = (δ brought back to x's shape) ⊙ ∂r/∂x. ``_expand`` brings δ back: the
reduced dims are re-inserted (when ``keepdim`` dropped them) and broadcast over x, the transpose of the
sum that the reduction did.
"""
from __future__ import annotations

import torch

from ._common import DeltaFunction

_T = torch.Tensor


def _dims(op, x, dim):
    """The reduced dims as sorted non-negative ints (None or () means every dim, as torch reads them); a dim
    out of range is refused, as torch refuses it (a 0-d tensor has dims 0 and -1)."""
    n = x.dim()
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(n))
    if isinstance(dim, int):
        dim = (dim,)
    lo, hi = (-n, n - 1) if n else (-1, 0)
    for d in dim:
        if not lo <= d <= hi:
            raise IndexError(f"torchbp.functional.{op}: dim {d} is out of range for an input of shape "
                             f"{list(x.shape)} (expected to be in range of [{lo}, {hi}])")
    return tuple(sorted(d % n if n else 0 for d in dim))


def _expand(d, x_shape, dims, keepdim):
    """δ of a reduction over ``dims``, back at x's shape: unsqueeze the dims keepdim removed, broadcast."""
    if not keepdim and len(x_shape):
        for k in dims:
            d = d.unsqueeze(k)
    return d.expand(x_shape)


def _count(x_shape, dims):
    n = 1
    for k in dims:
        n *= x_shape[k] if len(x_shape) else 1
    return n


class Sum(DeltaFunction):
    """out = Σ_dims x;  δ_x = δ broadcast back over the summed dims."""

    @staticmethod
    def forward(x, dims, keepdim, dtype):
        return torch.sum(x, dims, keepdim, dtype=dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.keepdim, _ = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, delta):
        return _expand(delta, ctx.shape, ctx.dims, ctx.keepdim), None, None, None


class Mean(Sum):
    """out = (1/n) Σ_dims x;  δ_x = δ / n broadcast back (n the number of reduced elements): Sum's δ of δ / n."""

    @staticmethod
    def forward(x, dims, keepdim, dtype):
        return torch.mean(x, dims, keepdim, dtype=dtype)

    @staticmethod
    def backward(ctx, delta):
        return Sum.backward(ctx, delta / _count(ctx.shape, ctx.dims))


class Var(DeltaFunction):
    """out = Σ (x − x̄)² / (n − c) (``std``: its square root);
    δ_x = δ ⊙ 2 (x − x̄) / (n − c)   (std: δ ⊙ (x − x̄) / ((n − c) out))."""

    @staticmethod
    def forward(x, dims, correction, keepdim, root):
        f = torch.std if root else torch.var
        return f(x, dims, correction=correction, keepdim=keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.correction, ctx.keepdim, ctx.root = inputs
        ctx.save_for_backward(x, output if ctx.root else None)

    @staticmethod
    def backward(ctx, delta):
        x, out = ctx.saved_tensors
        dims, keepdim = ctx.dims, ctx.keepdim
        centred = x - x.mean(dims, keepdim=True)
        scale = delta / (_count(x.shape, dims) - ctx.correction)
        scale = scale / out if ctx.root else 2 * scale
        return _expand(scale, x.shape, dims, keepdim) * centred, None, None, None, None


class Norm(DeltaFunction):
    """out = (Σ_dims |x|ᵖ)^(1/p);  δ_x = δ ⊙ sign(x) |x|^(p−1) / out^(p−1)  (p = 2: δ ⊙ x / out;
    0 where out = 0, as native's subgradient; p = ∞: δ shared evenly by the entries of largest |x|)."""

    @staticmethod
    def forward(x, p, dims, keepdim):
        return torch.linalg.vector_norm(x, p, dims, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.p, ctx.dims, ctx.keepdim = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, delta):
        x, out = ctx.saved_tensors
        p, dims, keepdim = ctx.p, ctx.dims, ctx.keepdim
        d = _expand(delta, x.shape, dims, keepdim)
        o = _expand(out, x.shape, dims, keepdim)
        if p == 2:
            g = d * x / o
            return g.masked_fill(o == 0, 0), None, None, None
        if p == 1:
            return d * x.sign(), None, None, None
        if p == float("inf") or p == -float("inf"):
            hit = (x.abs() == o)
            n = _expand(hit.sum(dims, keepdim=keepdim), x.shape, dims, keepdim)
            return d * x.sign() * hit / n, None, None, None
        g = d * x.sign() * x.abs().pow(p - 1) / o.pow(p - 1)
        return g.masked_fill(o == 0, 0), None, None, None


class Extremum(DeltaFunction):
    """out = max (or min) over dims;  δ_x = δ shared evenly by the entries equal to out (``amax`` / ``amin``,
    and ``max()`` / ``min()`` of a whole tensor)."""

    @staticmethod
    def forward(x, dims, keepdim, largest):
        return (torch.amax if largest else torch.amin)(x, dims, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.keepdim, _ = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, delta):
        x, out = ctx.saved_tensors
        dims, keepdim = ctx.dims, ctx.keepdim
        hit = x == _expand(out, x.shape, dims, keepdim)
        n = hit.sum(dims, keepdim=keepdim)
        return _expand(delta / n, x.shape, dims, keepdim) * hit, None, None, None


class ExtremumAt(DeltaFunction):
    """(values, indices) = max (or min) along one dim;  δ_x = δ at the chosen index, 0 elsewhere."""

    @staticmethod
    def forward(x, dim, keepdim, largest):
        return (torch.max if largest else torch.min)(x, dim, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dim, ctx.keepdim, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, delta, _):
        (idx,) = ctx.saved_tensors
        if len(ctx.shape) == 0:
            return delta.reshape(()), None, None, None
        if not ctx.keepdim:
            delta, idx = delta.unsqueeze(ctx.dim), idx.unsqueeze(ctx.dim)
        return delta.new_zeros(ctx.shape).scatter(ctx.dim, idx, delta), None, None, None


class LogSumExp(DeltaFunction):
    """out = ln Σ_dims eˣ;  δ_x = δ ⊙ e^(x − out)  (the softmax of x over dims)."""

    @staticmethod
    def forward(x, dims, keepdim):
        return torch.logsumexp(x, dims, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.keepdim = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, delta):
        x, out = ctx.saved_tensors
        dims, keepdim = ctx.dims, ctx.keepdim
        return _expand(delta, x.shape, dims, keepdim) * (x - _expand(out, x.shape, dims, keepdim)).exp(), \
            None, None


class CumSum(DeltaFunction):
    """out_i = Σ_{j ≤ i} x_j along dim;  δ_x_j = Σ_{i ≥ j} δ_i (a cumulative sum from the end)."""

    @staticmethod
    def forward(x, dim, dtype):
        return torch.cumsum(x, dim, dtype=dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, delta):
        if delta.dim() == 0:
            return delta, None, None
        return delta.flip(ctx.dim).cumsum(ctx.dim).flip(ctx.dim), None, None


class Prod(DeltaFunction):
    """out = Π_dim x;  δ_x_j = δ ⊙ Π_{i ≠ j} x_i  (the product of the others, exact with zeros)."""

    @staticmethod
    def forward(x, dim, keepdim, dtype):
        return torch.prod(x, dtype=dtype) if dim is None else torch.prod(x, dim, keepdim, dtype=dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dim, ctx.keepdim, _ = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        dim = ctx.dim
        flat = dim is None
        if flat:
            xs, dim = x.reshape(-1), 0
        else:
            xs = x
            if not ctx.keepdim and x.dim():
                delta = delta.unsqueeze(dim)
        if xs.dim() == 0:
            return delta, None, None, None
        if xs.shape[dim] == 0:  # an empty product: x has no element to receive δ
            return torch.zeros_like(x), None, None, None
        ones = torch.ones_like(xs.narrow(dim, 0, 1))
        # Π_{i<j} x_i · Π_{i>j} x_i: exclusive cumulative products from both ends
        before = torch.cat([ones, xs.narrow(dim, 0, xs.shape[dim] - 1)], dim).cumprod(dim)
        after = torch.cat([xs.narrow(dim, 1, xs.shape[dim] - 1), ones], dim).flip(dim).cumprod(dim).flip(dim)
        g = before * after * delta
        return (g.reshape(x.shape) if flat else g), None, None, None


# --- functional forms ---------------------------------------------------------------------------------

def _floating(x) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point())


def sum(input, dim=None, keepdim=False, *, dtype=None, out=None):
    """δ twin of ``torch.sum`` / ``Tensor.sum``."""
    if out is not None or not _floating(input):
        return torch.sum(input, dtype=dtype) if dim is None and out is None else \
            torch.sum(input, dim, keepdim, dtype=dtype, out=out)
    return Sum.apply(input, _dims("sum", input, dim), keepdim, dtype)


def mean(input, dim=None, keepdim=False, *, dtype=None, out=None):
    """δ twin of ``torch.mean`` / ``Tensor.mean``."""
    if out is not None or not _floating(input):
        return torch.mean(input, dtype=dtype) if dim is None and out is None else \
            torch.mean(input, dim, keepdim, dtype=dtype, out=out)
    return Mean.apply(input, _dims("mean", input, dim), keepdim, dtype)


def _var_args(op, input, args, kwargs):
    """(dims, correction, keepdim) from torch.var's overloads: (dim, unbiased, keepdim), (unbiased),
    (dim, *, correction, keepdim)."""
    args = list(args)
    dim, correction, keepdim = None, 1, False
    if args and isinstance(args[0], bool):
        correction = int(args.pop(0))
    elif args:
        dim = args.pop(0)
        if args:
            correction = int(args.pop(0))
        if args:
            keepdim = args.pop(0)
    dim = kwargs.pop("dim", dim)
    if "unbiased" in kwargs:
        correction = int(kwargs.pop("unbiased"))
    c = kwargs.pop("correction", None)
    correction = correction if c is None else c
    keepdim = kwargs.pop("keepdim", keepdim)
    return _dims(op, input, dim), correction, keepdim, kwargs


def _var_like(root):
    native = torch.std if root else torch.var

    def fn(input, *args, **kwargs):
        if not _floating(input):
            return native(input, *args, **kwargs)
        dims, correction, keepdim, rest = _var_args(fn.__name__, input, args, dict(kwargs))
        if rest:  # out= and anything new: native
            return native(input, *args, **kwargs)
        return Var.apply(input, dims, correction, keepdim, root)
    fn.__name__ = fn.__qualname__ = "std" if root else "var"
    fn.__doc__ = f"δ twin of ``torch.{fn.__name__}`` (every overload: dim, unbiased / correction, keepdim)."
    return fn


var, std = _var_like(False), _var_like(True)


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None, out=None):
    """δ twin of ``torch.linalg.vector_norm``."""
    if out is not None or dtype is not None or not _floating(x) or ord == 0:
        return torch.linalg.vector_norm(x, ord, dim, keepdim, dtype=dtype, out=out)
    return Norm.apply(x, float(ord), _dims("vector_norm", x, dim), keepdim)


def norm(input, p="fro", dim=None, keepdim=False, out=None, dtype=None):
    """δ twin of ``torch.norm`` / ``Tensor.norm`` for vector norms (p a number, or "fro" over the given dims)."""
    if p is None:
        p = "fro"
    if p == "fro" and (dim is None or isinstance(dim, int) or len(dim) <= 2):
        p = 2
    if isinstance(p, str) or out is not None or dtype is not None or not _floating(input) or p == 0:
        return torch.norm(input, p, dim, keepdim, out=out, dtype=dtype)
    return Norm.apply(input, float(p), _dims("norm", input, dim), keepdim)


def amax(input, dim=(), keepdim=False, *, out=None):
    """δ twin of ``torch.amax``."""
    if out is not None or not _floating(input):
        return torch.amax(input, dim, keepdim, out=out)
    return Extremum.apply(input, _dims("amax", input, dim), keepdim, True)


def amin(input, dim=(), keepdim=False, *, out=None):
    """δ twin of ``torch.amin``."""
    if out is not None or not _floating(input):
        return torch.amin(input, dim, keepdim, out=out)
    return Extremum.apply(input, _dims("amin", input, dim), keepdim, False)


def _max_like(largest):
    native = torch.max if largest else torch.min

    def fn(input, dim=None, keepdim=False, *, out=None):
        if out is not None or not _floating(input):
            return native(input, *(() if dim is None else (dim, keepdim)), **({} if out is None else {"out": out}))
        if isinstance(dim, torch.Tensor):  # the binary form: torch.max(a, b) is maximum
            from .pointwise import maximum, minimum
            return (maximum if largest else minimum)(input, dim)
        if dim is None:
            return Extremum.apply(input, _dims(fn.__name__, input, None), False, largest)
        values, indices = ExtremumAt.apply(input, dim, keepdim, largest)
        return torch.return_types.max((values, indices)) if largest else torch.return_types.min((values, indices))
    fn.__name__ = fn.__qualname__ = "max" if largest else "min"
    fn.__doc__ = f"δ twin of ``torch.{fn.__name__}``: whole tensor, along a dim (values, indices), or of two tensors."
    return fn


max, min = _max_like(True), _max_like(False)


def logsumexp(input, dim, keepdim=False, *, out=None):
    """δ twin of ``torch.logsumexp``."""
    if out is not None or not _floating(input):
        return torch.logsumexp(input, dim, keepdim, out=out)
    return LogSumExp.apply(input, _dims("logsumexp", input, dim), keepdim)


def cumsum(input, dim, *, dtype=None, out=None):
    """δ twin of ``torch.cumsum``."""
    if out is not None or not _floating(input):
        return torch.cumsum(input, dim, dtype=dtype, out=out)
    return CumSum.apply(input, dim, dtype)


def prod(input, dim=None, keepdim=False, *, dtype=None):
    """δ twin of ``torch.prod``."""
    if not _floating(input):
        return torch.prod(input, dtype=dtype) if dim is None else torch.prod(input, dim, keepdim, dtype=dtype)
    return Prod.apply(input, dim, keepdim, dtype)


ROUTES = {
    torch.sum: sum, _T.sum: sum, torch.mean: mean, _T.mean: mean,
    torch.var: var, _T.var: var, torch.std: std, _T.std: std,
    torch.linalg.vector_norm: vector_norm, torch.norm: norm, _T.norm: norm,
    torch.amax: amax, _T.amax: amax, torch.amin: amin, _T.amin: amin,
    torch.max: max, _T.max: max, torch.min: min, _T.min: min,
    torch.logsumexp: logsumexp, _T.logsumexp: logsumexp,
    torch.cumsum: cumsum, _T.cumsum: cumsum, torch.prod: prod, _T.prod: prod,
}

__all__ = ["sum", "mean", "var", "std", "vector_norm", "norm", "amax", "amin", "max", "min", "logsumexp",
           "cumsum", "prod"]
