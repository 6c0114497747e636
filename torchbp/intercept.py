"""``manual_backward()``: a TorchFunctionMode that routes torch / torch.nn.functional calls to their
δ twins, so models written functionally (and unswapped modules) get δ-formula gradients too."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from . import registry


def _needs_grad(args, kwargs) -> bool:
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            return True
        if isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.requires_grad for t in a):
            return True
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in kwargs.values())


class _Router(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = registry.function_for(func)
        # Route only calls that build a graph: inside a δ Function's forward (grad off) and on
        # tensors that need no gradient the native op is the same computation, and cheaper.
        # The mode is off while this runs, so the δ twin's own torch calls are not re-routed.
        if target is not None and torch.is_grad_enabled() and _needs_grad(args, kwargs):
            return target(*args, **kwargs)
        return func(*args, **kwargs)


def manual_backward() -> TorchFunctionMode:
    """Context manager: inside it, every call with a registered δ twin uses the twin.

    ``with torchbp.manual_backward(): loss = model(x).sum()`` then ``loss.backward()`` (inside or out)
    runs the hand-derived backward for every routed op.
    """
    return _Router()
