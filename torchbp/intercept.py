"""``manual_backward()``: a TorchFunctionMode that routes torch / torch.nn.functional calls to their
δ twins, so models written functionally (and unswapped modules) get δ-formula gradients too."""
from __future__ import annotations

import threading

import torch
import torch.utils.checkpoint as _checkpoint
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from . import registry
from .functional._common import compiling


_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_routes = registry._functions  # the callable table itself (register / unregister change it in place)


def _needs_grad(args, kwargs) -> bool:
    """Whether any tensor among the arguments (or in a list / tuple argument) requires grad."""
    for a in args:
        if isinstance(a, _Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, _Tensor) and t.requires_grad:
                    return True
    if kwargs:
        for v in kwargs.values():
            if isinstance(v, _Tensor) and v.requires_grad:
                return True
    return False


class _Router(TorchFunctionMode):
    # (torch.compile traces a checkpoint as one region of its own, recompute included: nothing to hand over)
    def __enter__(self):
        self._checkpoints = not compiling()
        if self._checkpoints:
            _checkpoint_routing.acquire()
        try:
            return super().__enter__()
        except BaseException:
            if self._checkpoints:
                _checkpoint_routing.release()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            if self._checkpoints:
                _checkpoint_routing.release()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Runs for every torch call in the block, structure ops (views, shapes, casts) included: those
        # pass straight through, at the cost of one dict lookup over an empty mode.
        try:
            target = _routes.get(func)
        except TypeError:  # an unhashable callable is never registered
            target = None
        # Route only calls that build a graph: inside a δ Function's forward (grad off) and on
        # tensors that need no gradient the native op is the same computation, and cheaper.
        # The mode is off while this runs, so the δ twin's own torch calls are not re-routed.
        if target is not None and _grad_enabled() and _needs_grad(args, kwargs):
            return target(*args, **kwargs) if kwargs else target(*args)
        return func(*args, **kwargs) if kwargs else func(*args)


def _routing_active() -> bool:
    return any(isinstance(mode, _Router) for mode in _get_current_function_mode_stack())


def _routed(fn):
    """``fn``, run under the routing wherever it is called from. A checkpointed function runs again
    during backward (its recompute), usually after the ``with manual_backward()`` block has closed: it
    must build the same graph, δ Functions included, as its forward did."""
    def run_routed(*args, **kwargs):
        if _routing_active():
            return fn(*args, **kwargs)
        with _Router():
            return fn(*args, **kwargs)
    return run_routed


class _RoutedCheckpointFunction(_checkpoint.CheckpointFunction):
    """``checkpoint(..., use_reentrant=True)``: its backward re-runs the function and back-propagates
    through that graph; the function is handed over routed."""

    @classmethod
    def apply(cls, function, preserve_rng_state, *args):
        if _routing_active():
            function = _routed(function)
        return _checkpoint_routing.originals["CheckpointFunction"].apply(function, preserve_rng_state, *args)


def _routed_generator(name):
    """``checkpoint(..., use_reentrant=False)``'s generator ``name``: the forward runs ``fn`` itself,
    under the routing; the recompute, in backward, runs the ``fn`` given to the generator: routed too."""
    def routed_generator(fn, *args, **kwargs):
        if _routing_active():
            fn = _routed(fn)
        return _checkpoint_routing.originals[name](fn, *args, **kwargs)
    return routed_generator


# torch.utils.checkpoint's names that receive the checkpointed function (torch >= 2.14 calls the
# generator's _impl directly; earlier releases the generator itself), and what stands in for each
_HANDOVERS = {
    "CheckpointFunction": _RoutedCheckpointFunction,
    "_checkpoint_without_reentrant_generator": _routed_generator("_checkpoint_without_reentrant_generator"),
    "_checkpoint_without_reentrant_generator_impl": _routed_generator("_checkpoint_without_reentrant_generator_impl"),
}


class _CheckpointRouting:
    """While any ``manual_backward()`` is open, torch.utils.checkpoint's two kinds hand their function
    over routed (above). ``checkpoint`` looks these names up in its module on every call, so this also
    reaches callers holding ``checkpoint`` itself (transformers' gradient checkpointing). A checkpoint
    called outside the routing, in any thread, runs as torch's own; the module is restored when the
    last block closes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self.originals = {}

    def acquire(self):
        with self._lock:
            if self._depth == 0:
                for name, routed in _HANDOVERS.items():
                    if hasattr(_checkpoint, name):
                        self.originals[name] = getattr(_checkpoint, name)
                        setattr(_checkpoint, name, routed)
            self._depth += 1

    def release(self):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for name, original in self.originals.items():
                    if getattr(_checkpoint, name) is _HANDOVERS[name]:
                        setattr(_checkpoint, name, original)


_checkpoint_routing = _CheckpointRouting()


def manual_backward() -> TorchFunctionMode:
    """Context manager: inside it, every call with a registered δ twin uses the twin.

    ``with torchbp.manual_backward(): loss = model(x).sum()`` then ``loss.backward()`` (inside or out)
    runs the hand-derived backward for every routed op. Gradient checkpointing
    (``torch.utils.checkpoint``, either kind) inside the block recomputes through the same routing
    during backward, inside the block or after it.
    """
    return _Router()
