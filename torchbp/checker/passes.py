"""One pass of the audit: a forward and backward of a model, hooked by :class:`Capture`, feeding each
gradient to a sink; and the subject's routing (twins swapped in, functional calls routed), and the
coverage walk (which parameter gradients δ formulas produced)."""
from __future__ import annotations

import contextlib
import warnings

import torch

from .. import registry
from ..intercept import manual_backward
from ..swap import swapped
from .capture import Capture, differentiable, leaves
from .state import buffers_kept, fresh, seed_generators, split_inputs

# autograd nodes that only cast / reshape / view a tensor: a parameter reaching a δ Function through
# them still has a δ-produced gradient
_PASSTHROUGH = {"ToCopy", "T", "Expand", "View", "UnsafeView", "Reshape", "ReshapeAlias", "Permute",
                "Transpose", "Squeeze", "Unsqueeze", "Clone", "Alias", "AsStrided", "Slice", "Select",
                "Split", "SplitWithSizes", "Unbind", "Chunk", "Contiguous", "Detach", "Conj"}


def _node_name(node) -> str:
    name = type(node).__name__.rstrip("0123456789")
    return name[:-len("Backward")] if name.endswith("Backward") else name


def _is_delta(node) -> bool:
    return registry.is_delta_function(getattr(type(node), "_forward_cls", None))


def coverage_walk(loss, params):
    """(covered, reached): ids of parameter tensors whose AccumulateGrad is reached from ``loss``,
    and those of them whose every consumer (looking through casts and views) is a δ Function."""
    ids = {id(p) for p in params}
    parents, accumulators, seen = {}, {}, set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None and id(var) in ids:
            accumulators[id(var)] = node
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(node)
                stack.append(child)

    def covered(node, depth=0):
        consumers = parents.get(node, [])
        if not consumers or depth > 64:
            return False
        for c in consumers:
            if _is_delta(c):
                continue
            if _node_name(c) in _PASSTHROUGH and covered(c, depth + 1):
                continue
            return False
        return True

    return {i for i, n in accumulators.items() if covered(n)}, set(accumulators)


class Pass:
    """One forward + backward of ``model`` with hooks calling ``sink(key, quantity, grad)``;
    parameter gradients arrive as (module name, parameter name). ``walk``: record which parameter
    gradients δ formulas produced (``covered``) of those the loss reaches (``reached``)."""

    def __init__(self, model, inputs, target, loss_fn, sink, *, seed, device, ctx=None,
                 keep_inputs=(), walk=False, repeat=0, on_repeat=None):
        self.capture = Capture(model, sink, keep_inputs, device)
        self.covered = self.reached = None
        with buffers_kept(model):
            seed_generators(seed, device)
            args, kwargs = split_inputs(fresh(inputs))
            try:
                with torch.enable_grad(), self.capture, (ctx or contextlib.nullcontext()):
                    out = model(*args, **kwargs)
                    loss = loss_fn(out, target)
                    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                        loss = loss.reshape(())
                self.capture.resolve()
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                    raise RuntimeError("torchbp.audit: the loss must be a scalar tensor that requires grad, "
                                       f"got {type(loss).__name__} {getattr(loss, 'shape', '')}")
                named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
                ins = [t for _, t in leaves((args, kwargs)) if differentiable(t)]
                wrt = [p for _, p in named] + ins
                if walk:
                    covered, reached = coverage_walk(loss, [p for _, p in named])
                    self.covered = {n for n, p in named if id(p) in covered}
                    self.reached = {n for n, p in named if id(p) in reached}
                for i in range(1 + repeat):
                    if i:
                        on_repeat()
                    grads = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=i < repeat)
                    for (n, _), g in zip(named, grads):
                        if g is not None:
                            module, _, pname = n.rpartition(".")
                            sink(module, pname, g)
                    del grads
            finally:
                self.capture.remove_tensor_hooks()


@contextlib.contextmanager
def routing(model):
    """Subject: modules swapped to their twins (exactly restored) and functional calls routed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = swapped(model)
        cm.__enter__()
    try:
        with manual_backward():
            yield
    finally:
        cm.__exit__(None, None, None)


class KeepGrads:
    """A sink keeping every grad (detached), or only those of ``keys``."""

    def __init__(self, keys=None):
        self.store, self.keys = {}, keys

    def __call__(self, key, qty, g):
        if self.keys is None or key in self.keys:
            self.store[(key, qty)] = g.detach()
