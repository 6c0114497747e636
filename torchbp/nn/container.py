"""The twin of nn.Sequential: runs of Linear (+ activation) children go through one δ Function.

A small network's step is mostly Python's per-Function cost; ``torchbp.functional.dense_stack`` pays it
once per run of dense layers instead of once per layer, with the same δ formulas. Anything that
watches or changes a layer of a run makes the container run its children one by one, as the plain
container would: hooks (the audit hooks every module, so it still sees each layer), a patched
``forward``, grad mode off, torch.func transforms, torch.compile tracing; inputs a run's layers would
refuse send that run down the per-layer path, whose errors name the problem.
"""
import itertools
import operator
import weakref

import torch
from torch.nn.modules import module as _module

from ..functional import activation as A
from ..functional._common import _functorch_active, compiling
from ..functional.stack import dense_stack
from . import activation as act
from .linear import Linear

# twin activation class -> (δ Function, None or a function giving its extra args from the module)
def _gelu_args(m):
    return (m.approximate,)


def _leaky_args(m):
    return (float(m.negative_slope),)


def _celu_args(m):
    return (float(m.alpha),)


_ACTS = {act.ReLU: (A.ReLU, None), act.Sigmoid: (A.Sigmoid, None), act.Tanh: (A.Tanh, None),
         act.GELU: (A.GELU, _gelu_args), act.SiLU: (A.SiLU, None), act.LeakyReLU: (A.LeakyReLU, _leaky_args),
         act.SELU: (A.SELU, None), act.CELU: (A.CELU, _celu_args), act.Mish: (A.Mish, None),
         act.Hardswish: (A.Hardswish, None), act.Hardsigmoid: (A.Hardsigmoid, None)}
_GLOBAL_HOOKS = tuple(getattr(_module, n) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks")
                      if hasattr(_module, n))
# each container's plan, rebuilt when its children or their classes change; kept outside the module so that
# nothing is added to it (pickling, unswap and state_dict see the plain container)
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


_contains, _FORWARD, _WEIGHT = operator.contains, itertools.repeat("forward"), itertools.repeat("weight")


def _plan(mods, types):
    """(steps, the modules of every run): a step is a child's index, or a run of ≥ 2 Linear (+ activation)
    children as a list of (linear, activation module or None, _ACTS entry or None)."""
    steps, watched, i, n = [], [], 0, len(mods)
    while i < n:
        run, j = [], i
        while j < n and types[j] is Linear:
            a = _ACTS.get(types[j + 1]) if j + 1 < n else None
            run.append((mods[j], mods[j + 1] if a else None, a))
            j += 2 if a else 1
        if len(run) >= 2:
            steps.append(run)
            watched += mods[i:j]
            i = j
        else:
            steps.append(i)
            i += 1
    # what each call checks of the runs' modules, as the dicts themselves: C-level any/map over them instead
    # of a Python function per module (a small model's step is mostly such per-call costs)
    hooks = [d for m in watched for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                          getattr(m, "_backward_pre_hooks", None)) if d is not None]
    return steps, tuple(watched), hooks, [m.__dict__ for m in watched], \
        [m._parameters for m in watched if type(m) is Linear]


class Sequential(torch.nn.Sequential):
    def forward(self, input):
        if (not isinstance(input, torch.Tensor) or not torch.is_grad_enabled() or any(_GLOBAL_HOOKS)
                or _functorch_active is None or _functorch_active() or compiling()):
            return super().forward(input)
        mods = tuple(self._modules.values())
        types = tuple(map(type, mods))
        plan = _PLANS.get(self)
        if plan is None or plan[0] != mods or plan[1] != types:
            plan = mods, types, *_plan(mods, types)
            _PLANS[self] = plan
        steps, watched, hooks, dicts, params = plan[2:]
        # the runs' layers as they are now: any hook, patched forward or missing weight means per-layer
        if not watched or any(hooks) or any(map(_contains, dicts, _FORWARD)) \
                or not all(map(_contains, params, _WEIGHT)):
            return super().forward(input)
        for step in steps:
            if step.__class__ is int:
                input = mods[step](input)
                continue
            # (m._parameters: m.weight goes through Module.__getattr__, 10x slower)
            layers = [(lin._parameters["weight"], lin._parameters.get("bias"),
                       None if a is None else (a[0], a[1](am) if a[1] else ())) for lin, am, a in step]
            if _chains(input, layers):
                try:
                    input = dense_stack(input, layers)
                    continue
                except RuntimeError:  # dtype or device mixes: the per-layer path raises a clear error
                    pass
            for lin, am, _ in step:
                input = lin(input)
                input = am(input) if am is not None else input
        return input


def _chains(x, layers) -> bool:
    """A floating input and 2-D weights (and 1-D biases) whose shapes chain. Dtypes and devices are
    left to the run's forward: F.linear refuses mixes (autocast's casts come first), and then the
    per-layer path runs and names the problem."""
    if not x.is_floating_point() or not x.shape:
        return False
    width = x.shape[-1]
    for W, b, _ in layers:
        s = W.shape
        if len(s) != 2 or s[1] != width or (b is not None and b.shape != s[:1]):
            return False
        width = s[0]
    return True


TWINS = {torch.nn.Sequential: Sequential}
__all__ = ["Sequential"]
