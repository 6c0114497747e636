"""What every δ Function shares: its base class, input checks that name the op, and autocast.

Nothing here computes a gradient; the formulas live in the family files beside this one.
"""
from __future__ import annotations

import torch


class DeltaFunction(torch.autograd.Function):
    """Base of every torchbp δ Function.

    The audit recognises δ-produced gradients by this base (``type(grad_fn)._forward_cls``).
    ``generate_vmap_rule`` holds because forward and backward are plain torch ops.
    """

    generate_vmap_rule = True


# --- checks: errors at least as clear as torch's own, naming the op -------------------------------

def check(cond: bool, op: str, message: str) -> None:
    if not cond:
        raise RuntimeError(f"torchbp.functional.{op}: {message}")


def check_tensor(op: str, name: str, t) -> None:
    check(isinstance(t, torch.Tensor), op, f"{name} must be a Tensor, got {type(t).__name__}")


def check_compatible(op: str, **tensors) -> None:
    """Same device and same floating dtype for every non-None tensor (torch refuses mixing too)."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    for k, v in items:
        check_tensor(op, k, v)
    name0, t0 = items[0]
    check(t0.is_floating_point(), op, f"{name0} must be floating point, got {t0.dtype}")
    mixed_ok = _autocast_state(t0.device.type) is not None  # autocast casts them to one dtype first
    for k, v in items[1:]:
        check(v.device == t0.device, op,
              f"{k} is on {v.device} but {name0} is on {t0.device}; move them to one device")
        check(mixed_ok or v.dtype == t0.dtype, op,
              f"{k} has dtype {v.dtype} but {name0} has dtype {t0.dtype}; cast one of them "
              "(or run under torch.autocast)")


# --- autocast ---------------------------------------------------------------------------------------
# torch.amp.custom_fwd/custom_bwd break with setup_context (pytorch#132388), so autocast is handled
# the way native autocast does it: cast the inputs (as autograd-tracked casts) before the op, then run
# the Function with autocast off, so forward and backward see one consistent dtype.

try:  # torch >= 2.4
    torch.is_autocast_enabled("cpu")

    def _autocast_state(device_type: str):
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
except TypeError:  # torch 2.2 / 2.3
    def _autocast_state(device_type: str):
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


# Autocast policies, as torch's autocast op lists have them (they differ between CPU and CUDA).
LOWER = "lower"          # run in the autocast dtype: linear, matmul, conv, attention
FP32 = "fp32"            # run in float32 on every device: most losses
FP32_CUDA = "fp32_cuda"  # run in float32 on CUDA, untouched on CPU: softmax, log_softmax, norms

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)  # autocast never casts float64


def _cast(dtype, args):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype in _CASTABLE else a
                 for a in args)


def apply(fn: type[torch.autograd.Function], policy: str, *args):
    """``fn.apply(*args)``, with autocast's casts for ``policy`` applied first when autocast is on."""
    x = args[0]
    dtype = _autocast_state(x.device.type) if isinstance(x, torch.Tensor) else None
    if dtype is None:
        return fn.apply(*args)
    if policy == FP32 or (policy == FP32_CUDA and x.device.type == "cuda"):
        dtype = torch.float32
    elif policy != LOWER:
        return fn.apply(*args)
    with torch.autocast(x.device.type, enabled=False):
        return fn.apply(*_cast(dtype, args))
