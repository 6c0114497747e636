"""Float64 throughout a float64 audit: a model may compute parts below float64 on purpose (a loss that
casts the logits with ``.float()``, ``softmax(..., dtype=torch.float32)`` in attention); inside a float64
audit those islands would make subject and reference differ by float32 rounding, a false FAIL.
``Float64Throughout`` upgrades every request for a lower floating dtype to float64, on both sides, and
records which calls it upgraded (the report's environment lists them)."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_LOWER = (torch.float32, torch.float16, torch.bfloat16)
_CASTS = {torch.Tensor.float: "Tensor.float", torch.Tensor.half: "Tensor.half",
          torch.Tensor.bfloat16: "Tensor.bfloat16"}
_DTYPE_ARGS = {torch.Tensor.to: "Tensor.to", torch.Tensor.type: "Tensor.type"}


def _name(func) -> str:
    return getattr(func, "__name__", None) or repr(func)


class Float64Throughout(TorchFunctionMode):
    """Inside: ``.float()`` / ``.half()`` / ``.bfloat16()``, ``.to(torch.float32)`` and any
    ``dtype=`` keyword naming a floating dtype below float64 give float64 instead. ``upgraded``: the
    calls changed (names, e.g. "Tensor.float", "softmax(dtype=float32)")."""

    def __init__(self):
        super().__init__()
        self.upgraded = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cast = _CASTS.get(func)
        if cast is not None and args and isinstance(args[0], torch.Tensor):
            self.upgraded.add(cast)
            return torch.Tensor.double(args[0], **{k: v for k, v in kwargs.items() if k == "memory_format"})
        dtype = kwargs.get("dtype")
        if dtype in _LOWER:
            self.upgraded.add(f"{_name(func)}(dtype={str(dtype).replace('torch.', '')})")
            kwargs = dict(kwargs, dtype=torch.float64)
        elif func in _DTYPE_ARGS and any(a in _LOWER for a in args[1:]):
            low = next(a for a in args[1:] if a in _LOWER)
            self.upgraded.add(f"{_DTYPE_ARGS[func]}({str(low).replace('torch.', '')})")
            args = tuple(torch.float64 if a in _LOWER else a for a in args)
        return func(*args, **kwargs)
