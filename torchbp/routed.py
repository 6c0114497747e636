"""Routed twins: what ``swap(model, strict=True)`` gives a module that owns parameters but has no registered twin
(a model's own RMSNorm, a class-token holder, a user's subclass of a torch layer).

The twin is a generated subclass whose ``forward`` is the module's own, run under :func:`manual_backward`, so every
op it calls that has a δ formula gets one. While it runs, the module's parameters are followed through
structure ops (views, reshapes, casts: see ``STRUCTURE``); the first op that would give one of them a
gradient from native autograd (an op with no δ formula) raises a TypeError that names the module, the
parameter and the op. So strict fails exactly where the audit's coverage would fall below 1.
"""
from __future__ import annotations

import weakref

import torch

from . import registry
from .intercept import _grad_enabled, _needs_grad, _routes, _Router

# Tensor methods / torch functions that only view, reshape, cast or copy a tensor (their autograd nodes are the
# ones the audit's coverage looks through): a parameter passing through them is still "the parameter".
STRUCTURE = frozenset({
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "H",
    "mH", "expand", "expand_as", "broadcast_to", "unsqueeze", "squeeze", "contiguous", "to", "float", "double",
    "half", "bfloat16", "type", "type_as", "clone", "detach", "alias", "__getitem__", "narrow", "select", "split",
    "split_with_sizes", "chunk", "unbind", "movedim", "moveaxis", "as_strided", "conj", "unflatten", "flatten",
    "ravel", "requires_grad_", "data",
})


def _name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # a property such as x.T: its descriptor's name
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _flat(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat(o)


class _StrictRouter(_Router):
    """manual_backward's routing, plus: tensors derived from ``params`` by structure ops are followed, and any
    other op that gives them a gradient without a δ formula raises."""

    def __init__(self, module, params):
        super().__init__()
        self.module = module
        self.names = {id(p): n for n, p in params}
        self.followed = weakref.WeakValueDictionary({id(p): p for _, p in params})

    def _first_followed(self, args, kwargs):
        """The first argument that is a followed tensor (a parameter or a structure op's result of one), or None."""
        followed = self.followed
        for t in _flat((args, kwargs) if kwargs else args):
            if followed.get(id(t)) is t:
                return t
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            target = _routes.get(func)
        except TypeError:  # an unhashable callable is never registered
            target = None
        grad = _grad_enabled()
        if target is not None and grad and _needs_grad(args, kwargs):
            return target(*args, **kwargs) if kwargs else target(*args)
        out = func(*args, **kwargs) if kwargs else func(*args)
        if grad and self.followed:
            hit = self._first_followed(args, kwargs)
            if hit is not None:
                results = [t for t in _flat(out) if t.requires_grad]
                if results and _name(func) in STRUCTURE:
                    for t in results:
                        self.followed[id(t)] = t
                        self.names.setdefault(id(t), self.names.get(id(hit), "?"))
                elif results:
                    cls = registry.native_for(type(self.module)) or type(self.module)
                    raise TypeError(
                        f"torchbp.swap(strict=True): {cls.__qualname__}'s parameter "
                        f"'{self.names.get(id(hit), '?')}' meets {getattr(func, '__qualname__', _name(func))}, "
                        "which has no δ formula: its gradient would come from native autograd. Register one with "
                        "torchbp.register(native_fn, delta_fn), or swap with strict=False.")
        return out


def _own_parameters(m):
    """The parameters m's own forward reads: its direct ones and those of children without a forward of their
    own (ParameterList / ParameterDict)."""
    params = list(m.named_parameters(recurse=False))
    for cname, c in m.named_children():
        if not has_forward(type(c)) and registry.twin_for(type(c)) is None:
            params += [(f"{cname}.{n}", p) for n, p in _own_parameters(c)]
    return params


_GENERATED: dict = {}  # native class -> its routed twin


def has_forward(cls: type) -> bool:
    """Whether modules of ``cls`` compute anything themselves (a ParameterList has no forward: its parameters
    are read by its parent's)."""
    return issubclass(cls, torch.jit.ScriptModule) or cls.forward is not torch.nn.Module.forward


def routable(cls: type) -> bool:
    """Whether ``cls`` can get a routed twin: a Python module class with a forward of its own."""
    return (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and not issubclass(cls, torch.jit.ScriptModule)
            and cls.forward is not torch.nn.Module.forward)


def routed_twin(cls: type) -> type:
    """The generated routed twin of ``cls`` (made once per class): same name, a subclass, forward routed and
    strict (see the module docstring). ``registry.native_for(twin)`` is ``cls``, so unswap and the audit's
    native pass restore it; ``registry.twin_for(cls)`` stays None (plain ``swap`` leaves ``cls`` native)."""
    twin = _GENERATED.get(cls)
    if twin is None:
        native_forward = cls.forward

        def forward(self, *args, **kwargs):
            if not torch.is_grad_enabled():
                return native_forward(self, *args, **kwargs)
            with _StrictRouter(self, [(n, p) for n, p in _own_parameters(self) if p.requires_grad]):
                return native_forward(self, *args, **kwargs)

        twin = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                                           "_get_name": lambda self: cls.__name__ + "[δ]"})
        _GENERATED[cls] = twin
        registry._natives[twin] = cls
    return twin


def is_routed_twin(cls: type) -> bool:
    return cls in _GENERATED.values()
