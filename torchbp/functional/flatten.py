"""Reshapes: flatten and unflatten move no value, so δ_a is δ read back in a's shape.

Like native, the outputs are views of the input where torch returns views. Autograd forbids in-place
ops on a view returned by a custom Function ("This view was created inside a custom Function ..."):
torchbp's own in-place activations handle that case (out-of-place δ, values written back), so
``Flatten -> ReLU(inplace=True)`` swaps; a native in-place op (``y.add_``) straight on a flatten
output still raises where native would rebase the view: clone the output there.
"""
from __future__ import annotations

import torch

from ._common import DeltaFunction, check, check_tensor


class Flatten(DeltaFunction):
    """z = a.flatten(start_dim, end_dim);  δ_a = δ.reshape(a.shape)."""

    @staticmethod
    def forward(a, start_dim, end_dim):
        return a.flatten(start_dim, end_dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx, delta):
        return delta.reshape(ctx.shape), None, None


class Unflatten(Flatten):
    """z = a.unflatten(dim, sizes);  δ_a = δ.reshape(a.shape) (setup_context and backward: Flatten's)."""

    @staticmethod
    def forward(a, dim, sizes):
        return a.unflatten(dim, sizes)


def _dim(op, input, d, name):
    n = max(input.dim(), 1)
    check(isinstance(d, int) and -n <= d < n, op,
          f"{name}={d!r} is out of range for an input of shape {list(input.shape)}")
    return d % n


def flatten(input, start_dim=0, end_dim=-1):
    """δ twin of ``torch.flatten`` / ``Tensor.flatten``."""
    check_tensor("flatten", "input", input)
    s, e = _dim("flatten", input, start_dim, "start_dim"), _dim("flatten", input, end_dim, "end_dim")
    check(s <= e, "flatten", f"start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    return Flatten.apply(input, s, e)


def unflatten(input, dim, sizes):
    """δ twin of ``torch.unflatten`` / ``Tensor.unflatten``."""
    check_tensor("unflatten", "input", input)
    d = _dim("unflatten", input, dim, "dim")
    sizes = tuple(int(n) for n in sizes)
    known = [n for n in sizes if n != -1]
    size = input.shape[d] if input.dim() else 1
    check(len(sizes) >= 1 and len(known) >= len(sizes) - 1 and all(n >= 0 for n in known), "unflatten",
          f"sizes must be non-negative, with at most one -1, got {list(sizes)}")
    prod = 1
    for n in known:
        prod *= n
    check(prod == size if len(known) == len(sizes) else (prod > 0 and size % prod == 0), "unflatten",
          f"sizes {list(sizes)} do not multiply to the size of dim {dim} ({size}) of input of shape "
          f"{list(input.shape)}")
    return Unflatten.apply(input, d, sizes)


ROUTES = {torch.flatten: flatten, torch.Tensor.flatten: flatten, torch.Tensor.unflatten: unflatten}
if hasattr(torch, "unflatten"):
    ROUTES[torch.unflatten] = unflatten

__all__ = ["flatten", "unflatten"]
