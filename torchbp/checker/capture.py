"""Per-module-call capture of the δ arriving at a layer (grad_output) and what it sends back
(grad_input), through forward hooks and tensor hooks.

``register_full_backward_hook`` is avoided (docs/design.md, "Known pitfalls"): it breaks in-place ops on a
hooked module's output and changes firing order when inputs need no grad. Instead:

- grad_output: a hook on each output tensor, registered when the module returns.
- grad_input: each input that needs grad is handed to the module as an alias (``x.view_as(x)``) and
  the alias is hooked, so the hook sees this module's contribution only (not a residual branch's, not
  a sibling's reading the same tensor: q, k and v projections). Only a view made by a multi-output op
  or inside a custom Function is hooked directly (its total gradient), since an alias of it would
  inherit a view mode that forbids the module's in-place ops.
- in-place: a hook on a *view* is lost when that view (or its base) is modified in place later, so
  every hook on a view is doubled by one on its base (when the view spans the base) or on the node
  that made it, and after the forward pass the pair is resolved by the version counter: unchanged ->
  keep the hook on the view, changed -> keep the fallback, which sees the value before the in-place op.

Keys: the qualified name from ``named_modules`` ("" for the root); a module's n-th call gets
``name#n`` (n >= 2). Parameter gradients are not captured here (the runner takes them from
``torch.autograd.grad``, leaving ``.grad`` alone).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch

from .. import registry


def leaves(obj, path=()):
    """(path, tensor) for every tensor in nested tuples / lists / dicts / dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            yield from leaves(o, path + (i,))
    elif isinstance(obj, dict):
        for k, o in obj.items():
            yield from leaves(o, path + (k,))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from leaves(getattr(obj, f.name), path + (f.name,))


def remap(obj, fn):
    """``obj`` with every tensor t in nested tuples / lists / dicts replaced by fn(t)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(remap(o, fn) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(remap(o, fn) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, remap(v, fn)) for k, v in obj.items())
    return obj


def differentiable(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and (t.is_floating_point() or t.is_complex())


def quantity(prefix: str, paths: list, path) -> str:
    return prefix if len(paths) == 1 else f"{prefix}[{'.'.join(str(p) for p in path)}]"


def kind(m: torch.nn.Module) -> str:
    cls = registry.native_for(type(m)) or type(m)
    return cls.__name__


class Capture:
    """Install with ``with Capture(model, sink):``; call ``resolve()`` once the forward pass is done.

    ``sink(key, quantity, grad)`` is called from the backward pass. ``keep_inputs``: keys whose call
    inputs (detached clones), buffers and RNG state are stored in ``self.inputs`` for the isolated check.
    """

    def __init__(self, model: torch.nn.Module, sink, keep_inputs=(), rng_device=None):
        self.model, self.sink = model, sink
        self.names = {}
        for name, m in model.named_modules():
            self.names.setdefault(m, name)
        self.keep_inputs, self.rng_device = set(keep_inputs), rng_device
        self.calls = defaultdict(int)
        self.order: dict[str, int] = {}      # key -> call index (forward order)
        self.kinds: dict[str, str] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.outputs: dict[str, list] = {}   # key -> [(quantity, path)] of hooked outputs
        self.inputs: dict[str, dict] = {}
        self._stack = defaultdict(list)
        self._pending = []  # (base kept until resolve(), its version, hook on the view, fallback, switch)
        self._handles = []
        # False once the forward pass is done: the hooks stay installed (so a checkpointed segment
        # recomputed during backward takes the same per-layer path as its forward) but record nothing
        self.recording = True

    # -- install / remove --------------------------------------------------------------------------
    def __enter__(self):
        for m in self.names:
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def remove_tensor_hooks(self):
        for _, _, a, b, _ in self._pending:
            for h in (a, b):
                if h is not None:
                    h.remove()
        self._pending.clear()

    # -- hooks ---------------------------------------------------------------------------------------
    def _hook(self, t: torch.Tensor, key: str, qty: str):
        base = t._base
        if base is None:
            def fire_plain(g):
                if g is not None:  # None: a multi-output Function's output no gradient reached
                    self.sink(key, qty, g)
            self._pending.append((None, 0, t.register_hook(fire_plain), None, None))
            return
        use = [None]  # set by resolve(): which of the pair fires ("view" or "fallback")

        def fire(which, g):
            if use[0] == which and g is not None:
                self.sink(key, qty, g)
        # fallback for when the view is modified in place later: a pre-hook on the autograd node that
        # made its base (when the view spans the base, a native reshape) or the view itself (a view
        # made inside a custom Function); that node stays in the graph, the view's own hook does not
        spans = (base.numel() == t.numel() and t.is_contiguous() and base.is_contiguous()
                 and t.storage_offset() == base.storage_offset())
        src, shape = (base, t.shape) if spans and base.requires_grad else (t, None)
        if src.grad_fn is not None:
            node, nr = src.grad_fn, src.output_nr
            fallback = node.register_prehook(
                lambda gs: fire("fallback", gs[nr] if shape is None or gs[nr] is None else gs[nr].reshape(shape)))
        elif src.requires_grad and src is base:
            fallback = base.register_hook(lambda g: fire("fallback", g.reshape(shape)))
        else:
            fallback = None
        self._pending.append((base, base._version, t.register_hook(lambda g: fire("view", g)),
                              fallback, use))

    def _hook_overwritten(self, t: torch.Tensor, key: str, qty: str):
        """The gradient arriving at a tensor that the module is about to overwrite in place: a pre-hook on
        the node that made it (the gradient of the value it had before), as an alias's fallback has."""
        nr = t.output_nr

        def fire(gs):
            if gs[nr] is not None:
                self.sink(key, qty, gs[nr])
        self._pending.append((None, 0, None, t.grad_fn.register_prehook(fire), None))

    def resolve(self):
        """After the forward pass: stop recording module calls, and choose, of each view/fallback pair,
        the hook that will see this tensor's gradient (see the module docstring). Hooks are switched
        off by a flag, not removed: removing one of several hooks on a tensor modified in place can
        silence the others."""
        self.recording = False
        for i, (base, version, on_view, fallback, use) in enumerate(self._pending):
            if use is None:
                continue
            use[0] = "fallback" if fallback is not None and base._version != version else "view"
            self._pending[i] = (None, version, on_view, fallback, use)  # let the base go

    def _pre(self, m, args, kwargs):
        if not self.recording:
            return None
        self.calls[m] += 1
        n = self.calls[m]
        key = self.names[m] + (f"#{n}" if n > 1 else "")
        self._stack[m].append(key)
        self.order.setdefault(key, len(self.order))
        self.kinds[key] = kind(m)
        self.modules[key] = m
        if not torch.is_grad_enabled():
            return None
        if key in self.keep_inputs:
            self.inputs[key] = {
                "args": remap(args, _snapshot), "kwargs": remap(kwargs, _snapshot),
                "buffers": {k: b.detach().clone() for k, b in m.named_buffers()},
                "rng": _rng_state(self.rng_device),
            }
        paths = [p for p, t in leaves((args, kwargs)) if differentiable(t)]
        if not paths:
            return None
        it = iter(paths)
        overwrites = overwrites_input(m)

        def alias(t):
            if not differentiable(t):
                return t
            q = quantity("grad_input", paths, next(it)[1:])
            if overwrites and t.grad_fn is not None and not t._is_view() and t.is_contiguous():
                # the module writes over t: an alias would be modified in place, which autograd records
                # as a copy into t's memory (a clone and strided copies of every gradient in backward);
                # the hook goes where the alias's fallback would take it, on the node that made t
                self._hook_overwritten(t, key, q)
                return t
            if t._is_view() and not _plain_view(t):
                # a view of a view inherits a creation mode that forbids in-place ops on it (made
                # inside a custom Function, by a multi-output op): hook t itself (its total gradient)
                self._hook(t, key, q)
                return t
            a = t.view_as(t)
            self._hook(a, key, q)
            return a
        return remap(args, alias), remap(kwargs, alias)

    def _post(self, m, args, kwargs, output):
        if not self.recording:
            return None
        key = self._stack[m].pop()
        if not torch.is_grad_enabled():
            return None
        outs = [(p, t) for p, t in leaves(output) if differentiable(t)]
        paths = [p for p, _ in outs]
        self.outputs[key] = []
        for p, t in outs:
            q = quantity("grad_output", paths, p)
            self.outputs[key].append((q, p))
            self._hook(t, key, q)
        return None


# activations whose ``inplace=True`` always writes over the input while gradients are recorded
_OVERWRITING = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.CELU, torch.nn.SELU,
                torch.nn.SiLU, torch.nn.Mish, torch.nn.Hardtanh, torch.nn.Hardswish, torch.nn.Hardsigmoid,
                torch.nn.RReLU, torch.nn.Threshold)


def overwrites_input(m: torch.nn.Module) -> bool:
    """Whether ``m`` is one of torch's activations (or its twin) set to write over its input in place
    (a subclass may run another forward: not assumed)."""
    if getattr(m, "inplace", False) is not True:
        return False
    cls = registry.native_for(type(m)) or type(m)
    return cls in _OVERWRITING


def _plain_view(t: torch.Tensor) -> bool:
    """Whether a view's creation mode allows in-place ops on views of it (so an alias of it may be
    hooked: the module's own share of its gradient, not the total that sibling readers add to)."""
    get = getattr(torch._C._autograd, "_get_creation_meta", None)
    try:
        return get is not None and get(t) == torch._C._autograd.CreationMeta.DEFAULT
    except RuntimeError:
        return False


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(t.requires_grad)


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
