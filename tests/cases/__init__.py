"""The case tables: one module per family, each a list ``CASES`` of :class:`Case` (an op, its native
counterpart, one input and the checks of the common matrix that input takes) and a list ``BAD`` of
:class:`Bad` (an input both sides refuse, and what torchbp's error must say). ``tests/test_matrix.py`` drives
every check over every table once; a family's test file keeps only what the matrix cannot say (edge cases,
regressions, fast paths, models).

The checks: FLOAT64 (ours against native, rel 1e-10, on every device), GRADCHECK (gradcheck and
gradgradcheck), LOW (the low-precision oracle rule in each of ``low_dtypes``), AUTOCAST (under
``torch.autocast``: the dtypes native gives, and the low-precision rule), VMAP (per-example gradients under
``torch.func.vmap(torch.func.grad(...))``, rel 1e-10) and ROUTE (``native`` run under
``torchbp.manual_backward()`` builds a δ graph and agrees with native, rel 1e-10).

To add an op's cases: append ``Case``s to its family's table (or ``sweep(...)`` them: one per input per
check), and name a check an input cannot take in ``skip`` with its reason. A new module in this package is a
new family table."""
from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

FLOAT64, GRADCHECK, LOW, AUTOCAST, VMAP, ROUTE = "float64", "gradcheck", "low", "autocast", "vmap", "route"
ALL = (FLOAT64, GRADCHECK, LOW, AUTOCAST, VMAP, ROUTE)
LOW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Case:
    """``ours(*args(), **kwargs)`` against ``native(*args(), **kwargs)``.

    args: builds the positional arguments afresh for each test (the tensors that want a gradient have
    requires_grad); kwargs: a dict, or a callable building one (for tensors among the keywords).
    checks: the matrix checks this input takes (see the module's docstring), on every device of ``devices``.
    skip: {check: reason} for the checks of ``checks`` this input cannot take; they are dropped from
    ``checks`` and the reason stays for the reader.
    vmap_dims: ``in_dims`` of the VMAP check, the arguments left off shared (default: the first argument's dim
    0, the rest shared); the gradients taken are those of every floating argument that requires grad.
    why: a note on what the case leaves out (read by people, not by the matrix).
    delta_ran: FLOAT64 also asserts that a δ Function node is in the graph of ``ours``' output.
    quiet: the warnings both sides raise (as torch does) are silenced."""

    id: str
    ours: Callable
    native: Callable
    args: Callable[[], tuple]
    kwargs: dict | Callable[[], dict] = field(default_factory=dict)
    checks: tuple = ALL
    skip: dict = field(default_factory=dict)
    vmap_dims: tuple | None = None
    low_dtypes: tuple = LOW_DTYPES
    devices: tuple = ("cpu", "cuda")
    delta_ran: bool = False
    quiet: bool = False
    why: str = ""

    def __post_init__(self):
        unknown = set(self.checks) - set(ALL) or set(self.skip) - set(ALL)
        assert not unknown, f"{self.id}: unknown checks {unknown}"
        object.__setattr__(self, "checks", tuple(c for c in self.checks if c not in self.skip))

    def make(self):
        """Fresh (args, kwargs)."""
        kw = self.kwargs() if callable(self.kwargs) else dict(self.kwargs)
        return tuple(self.args()), kw


# which checks a sweep's inputs take: the float64 inputs (edge values) also go through vmap and the routing,
# the low-precision inputs (larger, well-conditioned) also through autocast
SWEEP = {FLOAT64: (FLOAT64, VMAP, ROUTE), GRADCHECK: (GRADCHECK,), LOW: (LOW, AUTOCAST)}


def sweep(family, name, ours, native, kwargs=None, *, float64=(), gradcheck=(), low=(), **options):
    """One Case per input per kind: ``float64``, ``gradcheck``, ``low`` are lists of (label, args builder),
    each input taking the checks ``SWEEP`` gives its kind (less those in ``skip``)."""
    kwargs = {} if kwargs is None else kwargs
    label = f"{family}.{name}"
    out = []
    for kind, inputs in ((FLOAT64, float64), (GRADCHECK, gradcheck), (LOW, low)):
        for tag, make in inputs:
            out.append(Case(f"{label}-{tag}", ours, native, make, kwargs, checks=SWEEP[kind], **options))
    return out


@dataclass(frozen=True)
class Bad:
    """An input both ``ours`` and ``native`` refuse; ours with an error whose text matches ``match`` (naming
    the op and the problem). ``native=None``: torch accepts it and computes something wrong or undefined,
    which torchbp refuses (say why in ``why``)."""

    id: str
    ours: Callable
    native: Callable | None
    args: Callable[[], tuple]
    match: str
    kwargs: dict | Callable[[], dict] = field(default_factory=dict)
    why: str = ""

    def make(self):
        kw = self.kwargs() if callable(self.kwargs) else dict(self.kwargs)
        return tuple(self.args()), kw


class ModuleCall:
    """``cls(**kw)`` (swapped to its δ twin when ``twin``) applied to x as a function of (x, *parameters), so
    the matrix sees and compares the parameters' gradients too. A fresh module each call (a copy of one built
    here: building draws random numbers, which vmap refuses), its parameter values replaced by the arguments."""

    def __init__(self, cls, kw, twin):
        self.cls, self.kw, self.twin = cls, kw, twin
        self.__name__ = ("δ " if twin else "") + cls.__name__
        with torch.random.fork_rng(devices=[]):
            self._template = cls(**kw)

    def __call__(self, x, *params):
        import copy

        import torchbp

        module = copy.deepcopy(self._template)
        if self.twin:
            module = torchbp.swap(module)
            assert type(module) is not self.cls and isinstance(module, self.cls), type(module)
        names = [n for n, _ in module.named_parameters()]
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))


def module_case(family, cls, kw, shape, checks, x=None, **options):
    """A Case for the module ``cls(**kw)`` against its δ twin on an input of ``shape`` (``x(shape)`` builds it
    when given)."""
    def args():
        module = cls(**kw)
        xs = x(shape) if x else torch.randn(shape, dtype=torch.float64, requires_grad=True)
        return (xs, *[p.detach().double().requires_grad_() for p in module.parameters()])
    return Case(f"{family}.{cls.__name__}[{kw_id(kw)}]-{shape_id(shape)}", ModuleCall(cls, kw, True),
                ModuleCall(cls, kw, False), args, checks=tuple(checks), **options)


def seeded(f, seed=7):
    """f with the RNG reset before each call: both sides of a random op draw the same numbers."""
    def g(*a, **k):
        torch.manual_seed(seed)
        return f(*a, **k)
    g.__name__ = getattr(f, "__name__", type(f).__name__)
    return g


def kw_id(kw) -> str:
    """A short id for a kwargs dict: ``{'dim': 1}`` -> ``dim=1``."""
    return ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in kw.items()) if kw else ""


def shape_id(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "0d"


def families() -> list:
    """Every family table: the modules of this package."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"cases.{name}") for name in names]


def all_cases() -> list[Case]:
    cases = [c for family in families() for c in family.CASES]
    ids = [(c.id, check) for c in cases for check in c.checks]  # an id names one input of one check
    dup = {i for i, n in Counter(ids).items() if n > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases


def all_bad() -> list[Bad]:
    bad = [b for family in families() for b in getattr(family, "BAD", ())]
    dup = {i for i, n in Counter(b.id for b in bad).items() if n > 1}
    assert not dup, f"duplicate bad-input ids: {sorted(dup)}"
    return bad
