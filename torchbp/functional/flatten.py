"""Reshapes: flatten and unflatten move no value; their δ is δ read back in the input's shape.

They are structure (see docs/design.md, "Structure"): native's views, with native's view backward (a
reshape of δ), as every other view and reshape a model runs. Their output is a view of the input, as
native's, so in-place ops after them (``Flatten -> ReLU(inplace=True)``, torchvision's
``flatten -> Dropout(inplace=True)``, ``x.flatten(1).mul_(w)``) record into the same graph as natively;
the coverage walk looks through them. These functions add the checks that name the op.
"""
from __future__ import annotations

from ._common import check, check_tensor


def _dim(op, input, d, name):
    n = max(input.dim(), 1)
    check(isinstance(d, int) and -n <= d < n, op,
          f"{name}={d!r} is out of range for an input of shape {list(input.shape)}")
    return d % n


def flatten(input, start_dim=0, end_dim=-1):
    """``torch.flatten`` (native's view), with checks that name the op."""
    check_tensor("flatten", "input", input)
    s, e = _dim("flatten", input, start_dim, "start_dim"), _dim("flatten", input, end_dim, "end_dim")
    check(s <= e, "flatten", f"start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    return input.flatten(s, e)


def unflatten(input, dim, sizes):
    """``torch.unflatten`` (native's view), with checks that name the op."""
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
    return input.unflatten(d, sizes)


ROUTES = {}  # structure: native's views stay native under manual_backward()

__all__ = ["flatten", "unflatten"]
