"""The model's and the inputs' state around the passes: working copies in the audit's dtype and
device, fresh leaf inputs, the model's tensors restored after every pass, every random source the audit
can reach rewound before each pass, the caller's routing suspended for native autograd."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import random
import sys

import torch

from .. import registry
from .capture import leaves, remap


def first_float(model, inputs):
    """The first floating tensor among the model's parameters, buffers and the inputs (None if none)."""
    for t in list(model.parameters()) + list(model.buffers()) + [t for _, t in leaves(inputs)]:
        if t.is_floating_point():
            return t
    return None


@contextlib.contextmanager
def buffers_kept(model):
    """Buffers (BatchNorm running stats, num_batches_tracked) restored in place afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                if b.shape == v.shape and b.dtype == v.dtype:
                    b.copy_(v)


def converted_copy(model, dtype, device):
    """A converted deep copy, without copying the original's .grad tensors. Tensors a module computes
    from its parameters and keeps as attributes (``torch.nn.utils.prune``'s and the legacy
    ``weight_norm``'s ``weight``, recomputed by a forward pre-hook) are not graph leaves, which
    deepcopy refuses: the copy gets a detached clone of each (its hook recomputes it)."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    memo = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    for p in params:
        p.grad = None
    try:
        duplicate = copy.deepcopy(model, memo)
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    return duplicate.to(device=device, dtype=dtype)


def has_lazy_parameters(model) -> bool:
    """Whether some module still holds an uninitialised (lazy) parameter or buffer."""
    uninitialized = torch.nn.parameter.is_lazy
    return any(uninitialized(t) for t in list(model.parameters()) + list(model.buffers()))


class ModelState:
    """The tensor objects every module holds (``_parameters``, ``_buffers``) and their values: a
    forward that reassigns a buffer (``self.steps = self.steps + 1``) or changes a parameter in place
    (``nn.Embedding(max_norm=...)``) is undone by ``restore()``, bit for bit, with the same objects."""

    def __init__(self, model, source=None):
        """``source``: the model that ``model`` is a converted copy of (a working copy's original, which the
        audit never runs): each value is restored from the original's tensor, converted as the copy was,
        instead of from a clone, so no second copy of the model is held through a pass."""
        self.slots = []
        for m in model.modules():
            for table in (m._parameters, m._buffers):
                self.slots.append((m, table, dict(table)))
        origin = _originals(model, source) if source is not None else {}
        seen, self.values = set(), []
        for _, _, held in self.slots:
            for t in held.values():
                if t is not None and id(t) not in seen and not torch.nn.parameter.is_lazy(t):
                    seen.add(id(t))
                    o = origin.get(id(t))
                    self.values.append((t, o if o is not None else t.detach().clone()))

    def restore(self):
        for m, table, held in self.slots:
            if table.keys() != held.keys() or any(table[k] is not v for k, v in held.items()):
                table.clear()
                table.update(held)
        # every value copied back: kernels update buffers in place without a version bump (BatchNorm)
        with torch.no_grad():
            for t, value in self.values:
                t.copy_(value)


def _originals(model, source) -> dict:
    """id(tensor of ``model``) -> the tensor of ``source`` at the same module path and name (``model`` a
    converted deep copy of ``source``: the same modules in the same order), where both are there with the
    same shape."""
    mods, src = list(model.modules()), list(source.modules())
    if len(mods) != len(src):
        return {}
    origin = {}
    for m, s in zip(mods, src):
        for mine, theirs in ((m._parameters, s._parameters), (m._buffers, s._buffers)):
            for k, t in mine.items():
                o = theirs.get(k)
                if t is not None and o is not None and o.shape == t.shape and not torch.nn.parameter.is_lazy(o):
                    origin.setdefault(id(t), o)
    return origin


class RandomSources:
    """Every random source the audit can reach besides torch's default generators (which are seeded
    per pass): generators a module holds as attributes, numpy's and Python's global state. ``rewind``
    gives a model's generators (found at the same attribute paths, in a copy too) and the global
    states the values they had when the audit began; ``restore`` does so for the original model."""

    def __init__(self, model):
        self.model = model
        self.generators = {path: g.get_state() for path, g in _module_generators(model)}
        self.python = random.getstate()
        numpy = sys.modules.get("numpy")
        self.numpy = numpy.random.get_state() if numpy is not None else None

    def rewind(self, model=None):
        for path, g in _module_generators(model if model is not None else self.model):
            if path in self.generators:
                g.set_state(self.generators[path])
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)

    def restore(self):
        self.rewind(self.model)


def _module_generators(model):
    is_generator = type.__instancecheck__  # (torch.Generator's metaclass makes isinstance slow on other values)
    for name, m in model.named_modules():
        for attr, value in vars(m).items():
            if is_generator(torch.Generator, value):
                yield (name, attr), value


@contextlib.contextmanager
def function_modes_suspended():
    """The caller's TorchFunctionModes (``torchbp.manual_backward()``, a user's own) off inside: native
    autograd is the reference whatever context the audit is called from. torch's own modes (``with
    torch.device("cuda"):``) stay. Yields the suspended modes, innermost first."""
    stack = []
    while torch._C._len_torch_function_stack() > 0:
        stack.append(torch._C._pop_torch_function_stack())
    kept = [m for m in reversed(stack) if type(m).__module__.split(".")[0] == "torch"]
    for mode in kept:
        torch._C._push_on_torch_function_stack(mode)
    try:
        yield [m for m in stack if m not in kept]
    finally:
        for _ in kept:
            torch._C._pop_torch_function_stack()
        for mode in reversed(stack):
            torch._C._push_on_torch_function_stack(mode)


@contextlib.contextmanager
def modes_entered(modes):
    """The suspended caller's modes (as ``function_modes_suspended`` yielded them) entered again."""
    for mode in reversed(modes):
        torch._C._push_on_torch_function_stack(mode)
    try:
        yield
    finally:
        for _ in modes:
            torch._C._pop_torch_function_stack()


@contextlib.contextmanager
def native_classes(model):
    """Modules already swapped to their twins back to their native class inside; exactly as found
    afterwards. Yields the qualified names of the modules that were twins."""
    twins = [(name, m, type(m)) for name, m in model.named_modules()
             if registry.native_for(type(m)) is not None]
    for _, m, twin in twins:
        m.__class__ = registry.native_for(twin)
    try:
        yield [name for name, _, _ in twins]
    finally:
        for _, m, twin in twins:
            m.__class__ = twin


def fits(model, dtype, device) -> bool:
    """Whether every parameter and buffer already has ``device`` and (floating ones) ``dtype``."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device or (t.is_floating_point() and t.dtype != dtype):
            return False
    return True


def working_model(model, dtype, device):
    """``model`` itself when it fits, else a converted copy."""
    return model if fits(model, dtype, device) else converted_copy(model, dtype, device)


def convert(obj, dtype, device):
    """Fresh leaf copies: floating tensors to ``dtype``, every tensor to ``device``."""
    def conv(t):
        c = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
        return c.requires_grad_(t.requires_grad and c.is_floating_point())
    return remap(obj, conv)


def fresh(inputs):
    """New leaves with the same values (each pass builds its own graph from them)."""
    return remap(inputs, lambda t: t.detach().clone().requires_grad_(t.requires_grad))


def split_inputs(inputs):
    """(args, kwargs) of a tensor, a tuple of positional arguments or a dict of keyword arguments."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields"):
        return tuple(inputs), {}
    return (inputs,), {}


def seed_generators(seed, device):
    """Seed torch's default generators (CPU, and the audit's CUDA device) so each pass draws the same."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes."""
    b = t.detach().reshape(-1).contiguous().cpu()
    if b.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(b.view(torch.uint8).numpy()).hexdigest()  # the buffer itself, not a bytes copy
