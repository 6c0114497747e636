"""Twins of torch.nn's Lazy* modules (LazyLinear, LazyConv2d, LazyBatchNorm1d, ...).

A lazy module infers its shapes on the first forward and then turns itself into ``cls_to_become``
(LazyLinear into Linear). Each twin here runs the twin's forward from the first call on and becomes
the twin, not the native class, so a model swapped before its first forward stays on the δ path.
"""
import torch
from torch.nn.modules.lazy import LazyModuleMixin

from . import conv, linear, normalization

_TARGETS = {**linear.TWINS, **conv.TWINS, **normalization.TWINS}  # native class -> its twin

TWINS = {}
for _lazy in vars(torch.nn).values():
    if isinstance(_lazy, type) and issubclass(_lazy, LazyModuleMixin) and \
            getattr(_lazy, "cls_to_become", None) in _TARGETS:
        _twin = _TARGETS[_lazy.cls_to_become]
        TWINS[_lazy] = type(_lazy.__name__, (_lazy,), {"cls_to_become": _twin, "forward": _twin.forward,
                                                      "__module__": __name__, "__qualname__": _lazy.__name__})
globals().update({twin.__name__: twin for twin in TWINS.values()})
__all__ = [twin.__name__ for twin in TWINS.values()]
