"""One pass of the audit: a forward and backward of a model, hooked by :class:`Capture`, feeding each
gradient to a sink; and the subject's routing (twins swapped in, functional calls routed), and the
coverage walk (which parameter gradients δ formulas produced)."""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.utils.checkpoint

from .. import registry
from ..intercept import manual_backward
from ..swap import swapped
from .capture import Capture, differentiable, leaves
from .state import ModelState, fresh, seed_generators, split_inputs

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


def _is_custom(node) -> bool:
    """Any autograd.Function's node: a δ Function, a user's own Function (a twin may call one)."""
    return getattr(type(node), "_forward_cls", None) is not None


def coverage_walk(loss, params):
    """(covered, custom, reached): ids of parameter tensors whose AccumulateGrad is reached from
    ``loss``; of them those whose every consumer (looking through casts and views) is a δ Function
    (``covered``), and those with some consumer that is any autograd.Function, δ or a user's own
    (``custom``: their gradient is not native autograd's alone)."""
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

    def every_consumer(node, is_formula, depth=0):
        consumers = parents.get(node, [])
        if not consumers or depth > 64:
            return False
        for c in consumers:
            if is_formula(c):
                continue
            if _node_name(c) in _PASSTHROUGH and every_consumer(c, is_formula, depth + 1):
                continue
            return False
        return True

    def some_consumer(node, depth=0):
        for c in parents.get(node, []):
            if _is_custom(c) or (depth < 64 and _node_name(c) in _PASSTHROUGH and some_consumer(c, depth + 1)):
                return True
        return False

    covered = {i for i, n in accumulators.items() if every_consumer(n, _is_delta)}
    custom = {i for i, n in accumulators.items() if i in covered or some_consumer(n)}
    return covered, custom, set(accumulators)


def scan_graph(loss):
    """One walk of the graph: (whether it holds ``torch.utils.checkpoint(..., use_reentrant=True)``,
    which refuses ``torch.autograd.grad``; the names of the δ Functions in it)."""
    seen, stack = set(), [loss.grad_fn] if loss.grad_fn is not None else []
    reentrant, deltas = False, set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        reentrant = reentrant or name.startswith("CheckpointFunctionBackward")
        if _is_delta(node):
            deltas.add(name.removesuffix("Backward"))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return reentrant, deltas


def _refuse_deltas(deltas):
    if deltas:
        raise RuntimeError(
            "torchbp.audit: the reference pass (native autograd) ran torchbp δ Functions "
            f"({', '.join(sorted(deltas))}): the model's own forward routes through torchbp (manual_backward() or "
            "a δ function called inside it), so there is no native reference to compare with. Audit the "
            "model written with native torch calls; the audit routes them itself.")


try:  # the engine itself: torch.autograd.grad / .backward are torch functions, and every
    # TorchFunctionMode (the routing, float64 throughout) takes itself off the stack while it handles
    # one, so a checkpointed segment recomputed during backward would run without them
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover
    _engine_run_backward = None


@contextlib.contextmanager
def checkpoints_inline(seen=None):
    """Gradient-checkpointed segments (``torch.utils.checkpoint``, either kind) run as plain code in a
    hooked pass: a reentrant checkpoint's forward records no graph, so its layers would get no rows and
    its parameters no gradient at all when no input of the segment needs one. The pass without hooks
    keeps the checkpoints, as training runs them. ``checkpoint`` looks these names up in its module on
    every call (and the routing's hand-over for recomputes wraps whatever it finds there). ``seen``: a
    set that gets "checkpoint" when a segment ran inline (training runs it otherwise)."""
    seen = set() if seen is None else seen

    class InlineCheckpointFunction:  # stands in for CheckpointFunction: the segment runs as plain code
        @staticmethod
        def apply(function, preserve_rng_state, *args):
            seen.add("checkpoint")
            return function(*args)

    def inline_generator(function, *args, **kwargs):  # torch's non-reentrant checkpoint generator
        seen.add("checkpoint")
        yield  # nothing before or after the segment, which then runs as plain code

    cp = torch.utils.checkpoint
    inline = {"CheckpointFunction": InlineCheckpointFunction,
              "_checkpoint_without_reentrant_generator": inline_generator,
              "_checkpoint_without_reentrant_generator_impl": inline_generator}  # torch >= 2.14 calls this
    names = [n for n in inline if hasattr(cp, n)]
    saved = {n: getattr(cp, n) for n in names}
    for n in names:
        setattr(cp, n, inline[n])
    try:
        yield seen
    finally:
        for n, v in saved.items():
            setattr(cp, n, v)


# names whose reading in a module's forward makes it run differently under the audit's hooks
_HOOK_NAMES = frozenset({"_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                         "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                         "_global_backward_pre_hooks", "_GLOBAL_HOOKS"})
_READS_HOOKS: dict = {}


def _forward_reads_hooks(cls) -> bool:
    """Whether ``cls.forward`` reads a module's hooks itself (a container that fuses its children
    unless something watches them)."""
    known = _READS_HOOKS.get(cls)
    if known is None:
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        known = _READS_HOOKS[cls] = code is not None and not _HOOK_NAMES.isdisjoint(code.co_names)
    return known


def hook_dependent(module) -> bool:
    """Whether ``module`` (as it ran in a hooked pass) may run other code when no hook watches it:
    torchbp's Sequential with a run of dense layers it fuses (dense_stack), or any module whose forward
    reads hooks."""
    from ..nn.container import Sequential, _plan
    if type(module) is Sequential:
        mods = tuple(module._modules.values())
        return any(isinstance(step, list) for step in _plan(mods, tuple(map(type, mods)))[0])
    return _forward_reads_hooks(type(module))


def _gradients(loss, wrt, retain, reentrant):
    """d loss / d wrt (None where unused), with the pass's modes active throughout the backward; by
    ``.backward()`` where a reentrant checkpoint refuses ``torch.autograd.grad``, each tensor's own
    ``.grad`` set aside and put back."""
    if _engine_run_backward is None:
        if not reentrant:
            return torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=retain)
    seed = (torch.ones_like(loss, memory_format=torch.preserve_format),)
    if not reentrant:
        return _engine_run_backward((loss,), seed, retain, False, tuple(wrt), True, accumulate_grad=False)
    held = [t.grad for t in wrt]
    for t in wrt:
        t.grad = None
    try:
        if _engine_run_backward is None:
            loss.backward(retain_graph=retain)
        else:
            _engine_run_backward((loss,), seed, retain, False, (), allow_unreachable=True, accumulate_grad=True)
        return [t.grad for t in wrt]
    finally:
        for t, g in zip(wrt, held):
            t.grad = g


class Pass:
    """One forward + backward of ``model`` with hooks calling ``sink(key, quantity, grad)``;
    parameter gradients arrive as (module name, parameter name).

    - ``context``: context managers entered around forward and backward (the subject's routing,
      float64 throughout): a checkpointed segment recomputed during backward runs as it did forward.
    - ``hooked=False``: no per-layer hooks, the model runs exactly as it trains (fused runs, fast
      paths that hooks switch off, gradient checkpointing); only parameter gradients reach the sink.
      A hooked pass runs checkpointed segments inline (:func:`checkpoints_inline`).
    - ``random``: a :class:`RandomSources` rewound before the forward (generators the model owns,
      numpy's and Python's state); torch's default generators are seeded with ``seed``.
    - ``walk``: record which parameter gradients δ formulas produced (``covered``), which any
      autograd.Function touched (``custom``), of those the loss reaches (``reached``).
    - ``loss_value``: the loss as a number (the two passes' must agree up to rounding).
    - ``native_only``: a reference pass; refuse when its graph holds a δ Function (the model's own
      forward routes through torchbp): never δ against δ.
    - ``before_backward``: called with the pass once its forward is done (``hook_dependent``, ``inline``
      known), before the backward.

    Every parameter and buffer of ``model`` is restored afterwards (:class:`ModelState`; from ``source``,
    the model it is a converted copy of, where there is one).
    """

    def __init__(self, model, inputs, target, loss_fn, sink, *, seed, device, context=(), random=None,
                 keep_inputs=(), walk=False, repeat=0, on_repeat=None, hooked=True, native_only=False, source=None,
                 before_backward=None):
        sink = _outside_modes(sink)
        self.capture = Capture(model, sink if hooked else _ignore, keep_inputs, device)
        self.covered = self.custom = self.reached = self.loss_value = None
        self.inline = set()  # hooked: "checkpoint" when a checkpointed segment ran inline
        self.hook_dependent = []  # hooked: keys of the modules that may run otherwise without hooks
        state = ModelState(model, source)
        param_hooks = []
        try:
            seed_generators(seed, device)
            if random is not None:
                random.rewind(model)
            args, kwargs = split_inputs(fresh(inputs))
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.enable_grad())
                for cm in context:
                    stack.enter_context(cm)
                if hooked:
                    stack.enter_context(checkpoints_inline(self.inline))
                    stack.enter_context(self.capture)
                out = model(*args, **kwargs)
                if hooked:  # (the classes as they ran: the routing's twins are still in place here)
                    self.hook_dependent = [k for k, m in self.capture.modules.items() if hook_dependent(m)]
                loss = loss_fn(out, target)
                if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                    loss = loss.reshape(())
                self.capture.resolve()
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                    raise RuntimeError("torchbp.audit: the loss must be a scalar tensor that requires grad, "
                                       f"got {type(loss).__name__} {getattr(loss, 'shape', '')}")
                reentrant, deltas = scan_graph(loss)
                if native_only:
                    _refuse_deltas(deltas)
                self.loss_value = float(loss.detach())
                named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
                ins = [t for _, t in leaves((args, kwargs)) if differentiable(t)]
                wrt = [p for _, p in named] + ins
                if walk:
                    covered, custom, reached = coverage_walk(loss, [p for _, p in named])
                    self.covered = {n for n, p in named if id(p) in covered}
                    self.custom = {n for n, p in named if id(p) in custom}
                    self.reached = {n for n, p in named if id(p) in reached}
                if before_backward is not None:
                    before_backward(self)
                if not reentrant:  # each parameter's gradient judged the moment backward has it (see below)
                    param_hooks = [p.register_hook(_parameter_sink(sink, n)) for n, p in named]
                for i in range(1 + repeat):
                    if i:
                        on_repeat()
                    grads = _gradients(loss, wrt, i < repeat, reentrant)
                    if reentrant:
                        for (n, _), g in zip(named, grads):
                            if g is not None:
                                _parameter_sink(sink, n)(g)
                    del grads
        finally:
            for h in param_hooks:
                h.remove()
            self.capture.remove_tensor_hooks()
            state.restore()


def _parameter_sink(sink, name):
    """A hook handing the gradient of the parameter ``name`` to ``sink`` as (module name, parameter name).
    As a tensor hook it fires as soon as backward has the gradient, so a sink that judges it can let the
    gradient it was judged against go then, not after the whole backward (when every parameter's
    gradient is alive at once)."""
    module, _, pname = name.rpartition(".")

    def hook(g):
        sink(module, pname, g)
    return hook


def _ignore(key, qty, g):
    pass


def _outside_modes(sink):
    """``sink`` called with every TorchFunctionMode off: judging a gradient (metrics, digests) is the
    audit's own arithmetic, not the model's, so neither the routing nor float64-throughout has anything
    to say about it (and each would add its Python dispatch to every op of every row)."""
    def call(key, qty, g):
        with torch._C.DisableTorchFunction():
            sink(key, qty, g)
    return call


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
