"""Swap supported modules to their δ twins in place (by changing ``__class__``), and back.

Changing the class keeps the module object itself: parameters, buffers, hooks, optimizer references
and state_dict are untouched. Only exact native types are swapped; a user's subclass keeps its own
forward and is reported.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from . import registry


def _owns_parameters(m: torch.nn.Module) -> bool:
    return next(m.parameters(recurse=False), None) is not None


def unswappable(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(qualified name, class name)`` of every module that owns parameters but has no twin:
    its gradients will come from native autograd even when the model is swapped."""
    return [(name, type(m).__qualname__) for name, m in model.named_modules()
            if _owns_parameters(m) and registry.twin_for(type(m)) is None
            and registry.native_for(type(m)) is None]


def _swap(model: torch.nn.Module, strict: bool) -> list[torch.nn.Module]:
    _check_module(model, "swap")
    left = unswappable(model)
    if left and strict:
        listing = "\n".join(f"  {name or '<root>'}: {cls}" for name, cls in left)
        raise TypeError("torchbp.swap(strict=True): these modules own parameters but have no δ twin "
                        f"(nothing was swapped):\n{listing}\n"
                        "Register a twin with torchbp.register(NativeClass, TwinClass), or swap with strict=False.")
    changed = []
    for _, m in model.named_modules(remove_duplicate=True):
        twin = registry.twin_for(type(m))
        if twin is not None:
            m.__class__ = twin
            changed.append(m)
    if left:
        warnings.warn(f"torchbp.swap: {len(left)} module(s) left native (no δ twin; their gradients stay "
                      f"native):\n{_by_class(left)}", stacklevel=3)
    return changed


def _by_class(left: list[tuple[str, str]], shown: int = 4) -> str:
    """One line per class: ``  CNBlock ×18: features.1.0, features.1.1, … (+14 more)``."""
    groups: dict[str, list[str]] = {}
    for name, cls in left:
        groups.setdefault(cls, []).append(name or "<root>")
    lines = []
    for cls, names in groups.items():
        more = f", … (+{len(names) - shown} more)" if len(names) > shown else ""
        lines.append(f"  {cls} ×{len(names)}: {', '.join(names[:shown])}{more}")
    return "\n".join(lines)


def _check_module(model, fn: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torchbp.{fn} expects a torch.nn.Module, got {type(model).__name__}")


def swap(model: torch.nn.Module, *, strict: bool = False) -> torch.nn.Module:
    """Swap every supported module of ``model`` to its δ twin, in place; idempotent. Returns ``model``.

    ``strict=True`` first checks that every module owning parameters can be swapped and raises one
    TypeError naming all that cannot, changing nothing. Otherwise those are left native, with a warning.
    """
    _swap(model, strict)
    return model


def unswap(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the exact native class of every swapped module, in place. Returns ``model``."""
    _check_module(model, "unswap")
    for m in model.modules():
        native = registry.native_for(type(m))
        if native is not None:
            m.__class__ = native
    return model


@contextlib.contextmanager
def swapped(model: torch.nn.Module, *, strict: bool = False):
    """``with torchbp.swapped(model): ...`` — swapped inside the block; afterwards exactly the modules
    this call swapped are restored (ones that were twins already stay twins)."""
    changed = _swap(model, strict)
    try:
        yield model
    finally:
        for m in changed:
            native = registry.native_for(type(m))
            if native is not None:
                m.__class__ = native
