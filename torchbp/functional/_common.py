"""What every δ Function shares: its base class, input checks that name the op, and autocast.

Nothing here computes a gradient; the formulas live in the family files beside this one.
"""
from __future__ import annotations

import functools
import inspect

import torch


try:  # private APIs (torch >= 2.1); without them every call takes torch's own apply
    _functorch_active = torch._C._are_functorch_transforms_active
    from torch._C._functorch import unwrap_if_dead as _unwrap_if_dead
except (AttributeError, ImportError):
    _functorch_active = None

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
               inspect.Parameter.VAR_POSITIONAL)


_NO_SETUP = torch.autograd.Function.setup_context  # a ctx-style forward(ctx, ...) keeps this one


def _binding_is_identity(forward) -> bool:
    """Whether binding positional args to ``forward``'s signature is the identity: no defaults, no
    keyword-only or ``**kwargs`` parameters."""
    params = inspect.signature(forward).parameters.values()
    return all(p.kind in _POSITIONAL and p.default is p.empty for p in params)


class DeltaFunction(torch.autograd.Function):
    """Base of every torchbp δ Function.

    The audit recognises δ-produced gradients by this base (``type(grad_fn)._forward_cls``).
    ``generate_vmap_rule`` holds because forward and backward are plain torch ops.
    """

    generate_vmap_rule = True
    _bind_free = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # None: not known yet. A base's __init_subclass__ may give the class its forward after this runs
        # (the elementwise family builds forward(*args) from f): the first apply reads the final one.
        inherited = cls.forward is torch.autograd.Function.forward
        cls._bind_free = None if inherited else _binding_is_identity(cls.forward)

    @classmethod
    def apply(cls, *args, **kwargs):
        # torch's Function.apply binds the args to forward's signature with inspect.signature on every
        # call, a large share of a small model's step. Where that
        # binding is the identity and no functorch transform (vmap, grad, ...) is active, do what it does
        # next: unwrap dead functorch wrappers, then the C++ apply. Anything else takes torch's path.
        try:
            if cls._bind_free is None:
                cls._bind_free = _binding_is_identity(cls.forward)
            if kwargs or not cls._bind_free or _functorch_active is None or _functorch_active():
                return super().apply(*args, **kwargs)
            if not torch.is_grad_enabled() and cls.setup_context is not _NO_SETUP:
                # no_grad / inference_mode: no graph to record, and forward (new style: no ctx) is torch's
                # own ops, so call it directly (no Function bookkeeping in a swapped model's inference)
                return cls.forward(*args)
            return super(torch.autograd.Function, cls).apply(  # torch._C._FunctionBase.apply
                *[_unwrap_if_dead(a) if isinstance(a, torch.Tensor) else a for a in args])
        except RuntimeError as e:
            # autograd's own refusals speak to the author of a custom Function ("your Function ..."): the
            # user never wrote one, so name the op's δ Function instead
            if "your Function" not in str(e):
                raise
            raise RuntimeError(f"torchbp: the δ Function {cls.__name__} (torchbp's, for this op) cannot run "
                               "here: " + str(e).replace("your Function", f"the δ Function {cls.__name__}")) from e


def inplace_ok() -> bool:
    """True where a backward may update its own temporaries in place: no graph is being recorded
    (a first-order backward, not create_graph) and no torch.func transform is active."""
    return not torch.is_grad_enabled() and _functorch_active is not None and not _functorch_active()


def scale_(t, s):
    """t ⊙ s for a fresh temporary ``t``, written into ``t`` where ``inplace_ok`` (one allocation fewer)."""
    if inplace_ok():
        try:
            return t.mul_(s)
        except RuntimeError:  # legacy vmap (autograd.grad(is_grads_batched=True)): s is batched, t is not
            pass
    return t * s


def unbroadcast(g, shape):
    """δ of an operand that was broadcast to ``g``'s shape: summed back to ``shape`` (the transpose of
    broadcasting: each element of the operand received δ from every position it was copied to)."""
    return g if g.shape == shape else g.sum_to_size(shape)


# --- checks: errors at least as clear as torch's own, naming the op -------------------------------

def fail(op: str, message: str):
    """Raise the error a failed check gives: the op named, then the problem. Called directly where a check
    runs on every call and its message is worth building only once it has failed."""
    raise RuntimeError(f"torchbp.functional.{op}: {message}")


def check(cond: bool, op: str, message: str) -> None:
    if not cond:
        fail(op, message)


def check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a Tensor, got {type(t).__name__}")


def check_compatible(op: str, **tensors) -> None:
    """Same device and same floating dtype for every non-None tensor (torch refuses mixing too).

    Runs on every call of an op: the common case returns early, messages are built only on failure.
    """
    values = iter(tensors.values())
    t0 = next(values)
    # (dtype.is_floating_point, not t0.is_floating_point(): under manual_backward each tensor query is a call
    # through the mode, a dtype's attribute is not)
    if isinstance(t0, torch.Tensor) and (dtype := t0.dtype).is_floating_point:
        device, mixed_ok = t0.device, None
        for v in values:  # a plain loop: all() over a generator costs twice as much here
            if v is None:
                continue
            if not isinstance(v, torch.Tensor) or v.device != device:
                break
            if v.dtype != dtype:
                if mixed_ok is None:  # autocast casts them to one dtype first
                    mixed_ok = _autocast_state(device.type) is not None
                if not mixed_ok:
                    break
        else:
            return
    items = [(k, v) for k, v in tensors.items() if v is not None]
    for k, v in items:
        check_tensor(op, k, v)
    name0, t0 = items[0]
    if not t0.is_floating_point():
        fail(op, f"{name0} must be floating point, got {t0.dtype}")
    device, dtype, mixed_ok = t0.device, t0.dtype, None
    for k, v in items[1:]:
        if v.device != device:
            fail(op, f"{k} is on {v.device} but {name0} is on {device}; move them to one device")
        if v.dtype != dtype:
            if mixed_ok is None:  # autocast casts them to one dtype first
                mixed_ok = _autocast_state(device.type) is not None
            if not mixed_ok:
                fail(op, f"{k} has dtype {v.dtype} but {name0} has dtype {dtype}; cast one of them "
                         "(or run under torch.autocast)")


def check_inplace_target(op: str, x: torch.Tensor) -> None:
    """Refuse, as autograd does, an in-place op on a view that a custom Function returned (a user's own
    Function, or a δ Function): the view's graph would not see the op, so a caller going on with the view
    would get a gradient without it. Under no_grad nothing is recorded, and the op may run. (Not while
    torch.compile traces: ``_is_view`` would break the graph, and the traced write is native's copy_.)"""
    if torch.is_grad_enabled() and not compiling() and x._is_view() \
            and isinstance(x.grad_fn, torch.autograd.function.BackwardCFunction):
        raise RuntimeError(
            f"torchbp.functional.{op}: the input is a view returned by a custom Function "
            f"({type(x.grad_fn).__name__}) and is being modified in place; autograd forbids this (its logic for "
            "in-place ops on views would override the custom Function's backward, leading to incorrect "
            "gradients). Clone the custom Function's output first, or use the out-of-place op.")


class _named:
    """``with _named(op):`` re-raises an error of torch's own forward (its value, shape and mode checks run
    in the native kernels: no extra pass or host sync) with the op's name in front, as torchbp's own checks
    name it. (A class: a contextlib generator costs several times as much per call.)"""

    __slots__ = ("op",)

    def __init__(self, op):
        self.op = op

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is not None and issubclass(kind, (RuntimeError, IndexError, ValueError)) \
                and not str(e).startswith("torchbp."):
            raise kind(f"torchbp.functional.{self.op}: {e}") from e
        return False


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

    _set_autocast = torch.set_autocast_enabled
except TypeError:  # torch 2.2 / 2.3
    _set_autocast = None

    def _autocast_state(device_type: str):
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
_function_mode_on = getattr(torch._C, "_is_torch_function_mode_enabled", None)


def compiling() -> bool:
    """Whether torch.compile is tracing this call (False on a torch that cannot tell)."""
    return _compiling is not None and _compiling()


def _apply_autocast_off(fn, device_type, args):
    """``fn.apply(*args)`` under ``torch.autocast(device_type, enabled=False)``, entered (when autocast
    is on for ``device_type``). The context manager's Python bookkeeping costs more than a small op; on this
    thread its effect is the switch alone, so that is all this does, except where the context manager
    does more: under torch.compile and under torch function modes (torch.export records it)."""
    if _set_autocast is None or _compiling is None or _function_mode_on is None or _compiling() \
            or _function_mode_on():
        with torch.autocast(device_type, enabled=False):
            return fn.apply(*args)
    _set_autocast(device_type, False)
    try:
        return fn.apply(*args)
    finally:
        _set_autocast(device_type, True)

# Autocast policies, as torch's autocast op lists have them (they differ between CPU and CUDA).
LOWER = "lower"          # run in the autocast dtype: linear, matmul, conv, attention
FP32 = "fp32"            # run in float32 on every device: most losses
FP32_CUDA = "fp32_cuda"  # run in float32 on CUDA, untouched on CPU: softmax, log_softmax, norms
PROMOTE_CUDA = "promote_cuda"  # on CUDA every float input in the widest dtype among them, CPU untouched: bilinear

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)  # autocast never casts float64


def _cast(dtype, args):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype in _CASTABLE else a
                 for a in args)


def autocast_dtype(policy: str, args):
    """The dtype autocast would run an op of ``policy`` in, for these args (the first one's device decides),
    or None: autocast off there, or the policy leaves the op alone on that device. ``_cast`` applies it
    (float64 stays float64)."""
    if not _any_autocast():  # one C call instead of a device lookup and a per-device query
        return None
    x = args[0]
    dtype = _autocast_state(x.device.type) if isinstance(x, torch.Tensor) else None
    if dtype is None or policy == LOWER:
        return dtype
    cuda = x.device.type == "cuda"
    if policy == FP32 or (policy == FP32_CUDA and cuda):
        return torch.float32
    if policy == PROMOTE_CUDA and cuda:
        return functools.reduce(torch.promote_types,
                                [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in _CASTABLE])
    return None


def apply(fn: type[torch.autograd.Function], policy: str, *args):
    """``fn.apply(*args)``, with autocast's casts for ``policy`` applied first when autocast is on (a few
    Functions take the dtype and cast inside instead, so the graph has no cast node: dense_stack,
    cross_entropy, half_squared_error)."""
    dtype = autocast_dtype(policy, args)
    if dtype is None:
        return fn.apply(*args)
    return _apply_autocast_off(fn, args[0].device.type, _cast(dtype, args))


# max(0, u) as native computes it (clamp_min with a number for bound): torch < 2.14 passes δ where u
# equals the bound (gradient 1), torch >= 2.14 does not (gradient 0). The δ formulas of ops that native
# writes with such a clamp (the margin losses) follow the torch they run on, so both sides agree.
CLAMP_PASSES_AT_BOUND = tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 14)


def above_bound(u: torch.Tensor, bound=0) -> torch.Tensor:
    """The derivative of max(bound, u) in u, as native's clamp takes it: [u ≥ bound] on torch < 2.14,
    [u > bound] on torch >= 2.14 (the two differ only where u equals the bound)."""
    return u >= bound if CLAMP_PASSES_AT_BOUND else u > bound
