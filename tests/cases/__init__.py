"""The case tables: one module per family, each a list of :class:`Case` (an op, its native counterpart, one
input and the checks of the common matrix that input takes). ``tests/test_matrix.py`` drives every check over
every table once; a family's test file keeps only what the matrix cannot say (edge cases, regressions,
twins, routes).

To add an op's cases: append ``Case``s to its family's table (or ``sweep(...)`` them: one per input per
check), give a skipped check its reason in ``why``, and list a new family module in ``FAMILIES``."""
from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

FLOAT64, GRADCHECK, LOW = "float64", "gradcheck", "low"
LOW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Case:
    """``ours(*args(), **kwargs)`` against ``native(*args(), **kwargs)``.

    args: builds the positional arguments afresh for each test (the tensors that want a gradient have
    requires_grad); kwargs: a dict, or a callable building one (for tensors among the keywords).
    checks: the matrix checks this input takes: FLOAT64 (rel 1e-10, on every device), GRADCHECK (gradcheck and
    gradgradcheck), LOW (the low-precision oracle rule in ``low_dtypes``, on
    every device unless ``devices`` says otherwise).
    why: the reason a check that would seem to apply is left out (read by people, not by the matrix).
    delta_ran: FLOAT64 also asserts that a δ Function node is in the graph of ``ours``' output.
    quiet: the warnings both sides raise (as torch does) are silenced."""

    id: str
    ours: Callable
    native: Callable
    args: Callable[[], tuple]
    kwargs: dict | Callable[[], dict] = field(default_factory=dict)
    checks: tuple = (FLOAT64, GRADCHECK, LOW)
    low_dtypes: tuple = LOW_DTYPES
    devices: tuple = ("cpu", "cuda")
    delta_ran: bool = False
    quiet: bool = False
    why: str = ""

    def make(self):
        """Fresh (args, kwargs)."""
        kw = self.kwargs() if callable(self.kwargs) else dict(self.kwargs)
        return tuple(self.args()), kw


def sweep(family, name, ours, native, kwargs=None, *, float64=(), gradcheck=(), low=(), **options):
    """One Case per input per check: ``float64``, ``gradcheck``, ``low`` are lists of (label, args builder)."""
    kwargs = {} if kwargs is None else kwargs
    label = f"{family}.{name}"
    out = []
    for check, inputs in ((FLOAT64, float64), (GRADCHECK, gradcheck), (LOW, low)):
        for tag, make in inputs:
            out.append(Case(f"{label}-{tag}", ours, native, make, kwargs, checks=(check,), **options))
    return out


class ModuleCall:
    """``cls(**kw)`` (swapped to its δ twin when ``twin``) applied to x as a function of (x, *parameters), so
    the matrix sees and compares the parameters' gradients too. A fresh module each call: its own parameter
    values are replaced by the arguments."""

    def __init__(self, cls, kw, twin):
        self.cls, self.kw, self.twin = cls, kw, twin
        self.__name__ = ("δ " if twin else "") + cls.__name__

    def __call__(self, x, *params):
        import torchbp

        module = self.cls(**self.kw)
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


def kw_id(kw) -> str:
    """A short id for a kwargs dict: ``{'dim': 1}`` -> ``dim=1``."""
    return ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in kw.items()) if kw else ""


def shape_id(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "0d"


FAMILIES = ["linear", "activation", "loss", "conv", "pooling", "normalization", "sparse", "tensor_ops", "attention", "upsampling", "rnn"]


def all_cases() -> list[Case]:
    cases = []
    for name in FAMILIES:
        cases += importlib.import_module(f"cases.{name}").CASES
    ids = [(c.id, check) for c in cases for check in c.checks]  # an id names one input of one check
    dup = {i for i, n in Counter(ids).items() if n > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases
