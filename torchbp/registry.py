"""The one table every front end reads: native callable -> δ function, native module class -> twin.

The built-in entries come from each family's ``ROUTES`` (torchbp.functional) and ``TWINS``
(torchbp.nn); :func:`register` adds users' own. ``swap`` reads the module table, ``manual_backward``
the callable table, the audit both (to tell which gradients came from δ formulas).
"""
from __future__ import annotations

from typing import Callable

import torch

from . import functional, nn

_functions: dict = {}   # native callable -> callable with the native's signature
_twins: dict = {}       # native module class -> twin class
_natives: dict = {}     # twin class -> native module class
_user_functions: set = set()  # autograd.Function classes registered by users (count as δ formulas)


def register(native, twin_or_function=None):
    """Route ``native`` to ``twin_or_function`` in swap / manual_backward / audit.

    - ``register(MyLayer, MyLayerTwin)``: ``MyLayerTwin`` must subclass ``MyLayer`` (so isinstance,
      parameters and state_dict stay) and override ``forward``; ``torchbp.swap`` then swaps it.
    - ``register(my_fn, my_delta_fn)``: calls of ``my_fn`` inside ``manual_backward()`` go to
      ``my_delta_fn`` (same signature); an ``autograd.Function`` subclass is called through ``.apply``.

    Works as a decorator too: ``@torchbp.register(MyLayer)`` above the twin class. Returns the twin.
    """
    if twin_or_function is None:
        return lambda t: register(native, t)
    if isinstance(native, type) and issubclass(native, torch.nn.Module):
        twin = twin_or_function
        if not (isinstance(twin, type) and issubclass(twin, native)):
            raise TypeError(f"torchbp.register: the twin of {native.__qualname__} must be a subclass of it "
                            f"that overrides forward, got {twin!r}")
        if twin.forward is native.forward:
            raise TypeError(f"torchbp.register: {twin.__qualname__} does not override forward")
        _twins[native] = twin
        _natives[twin] = native
        return twin
    if not callable(native):
        raise TypeError(f"torchbp.register: {native!r} is neither a module class nor a callable")
    fn = twin_or_function
    if isinstance(fn, type) and issubclass(fn, torch.autograd.Function):
        _user_functions.add(fn)
        fn = fn.apply
    elif not callable(fn):
        raise TypeError(f"torchbp.register: {twin_or_function!r} is not callable")
    _functions[native] = fn
    return twin_or_function


def unregister(native) -> None:
    """Remove ``native``'s entry (a module class or a callable); unknown entries are ignored."""
    twin = _twins.pop(native, None)
    _natives.pop(twin, None)
    fn = _functions.pop(native, None)
    _user_functions.discard(getattr(fn, "__self__", None))


def function_for(native) -> Callable | None:
    """The δ callable routed for ``native``, or None."""
    try:
        return _functions.get(native)
    except TypeError:  # unhashable callables are never registered
        return None


def twin_for(cls: type) -> type | None:
    """The twin class for exactly ``cls`` (subclasses are not swapped), or None."""
    return _twins.get(cls)


def native_for(cls: type) -> type | None:
    """The native class a twin stands in for, or None if ``cls`` is not a twin."""
    return _natives.get(cls)


def is_delta_function(cls: type) -> bool:
    """Whether a gradient from this autograd.Function class counts as produced by δ formulas."""
    return isinstance(cls, type) and (issubclass(cls, functional.DeltaFunction) or cls in _user_functions)


def modules() -> dict:
    """A copy of the module table: native class -> twin."""
    return dict(_twins)


def functions() -> dict:
    """A copy of the callable table: native callable -> δ callable."""
    return dict(_functions)


for _family in functional.FAMILIES:
    for _native, _fn in _family.ROUTES.items():
        register(_native, _fn)
for _family in nn.FAMILIES:
    for _native, _twin in _family.TWINS.items():
        register(_native, _twin)
