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
from .routed import has_forward, routable, routed_twin


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
        # strict: these get routed twins (torchbp.routed); only a module whose forward cannot be routed is refused
        mods = dict(model.named_modules())
        stuck = [(name, cls) for name, cls in left if has_forward(type(mods[name])) and not routable(type(mods[name]))]
        if stuck:
            listing = "\n".join(f"  {name or '<root>'}: {cls}" for name, cls in stuck)
            raise TypeError("torchbp.swap(strict=True): these modules own parameters but have no δ twin and a "
                            f"forward that cannot be routed (nothing was swapped):\n{listing}\n"
                            "Register a twin with torchbp.register(NativeClass, TwinClass), or swap with strict=False.")
    changed = []
    for _, m in model.named_modules(remove_duplicate=True):
        twin = registry.twin_for(type(m))
        if twin is None and strict and registry.native_for(type(m)) is None and _owns_parameters(m) \
                and routable(type(m)):
            twin = routed_twin(type(m))
        if twin is not None:
            m.__class__ = twin
            changed.append(m)
    if left and not strict:
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

    A module that owns parameters but has no twin is left native, with a warning (its functional calls still
    get δ formulas inside ``manual_backward()``). ``strict=True`` instead gives each such module a routed twin
    (``torchbp.routed``): its own forward, run under ``manual_backward()``, which raises a TypeError naming the
    module, the parameter and the op the first time a parameter meets an op with no δ formula (a gradient
    native autograd would produce). A module whose forward cannot be routed (a ScriptModule) makes strict
    raise at once, changing nothing.
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
