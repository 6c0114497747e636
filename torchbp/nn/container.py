"""The twin of nn.Sequential: runs of Linear (+ activation) children go through one δ Function.

A small network's step is mostly Python's per-Function cost; ``torchbp.functional.dense_stack`` pays it
once per run of dense layers instead of once per layer, with the same δ formulas. Anything that
watches or changes a layer in between makes that child run on its own, as the plain container would:
hooks (the audit hooks every module, so it still sees each layer), a patched ``forward``, grad mode
off, torch.func transforms, torch.compile tracing, or inputs the layers would refuse
(whose per-layer errors name the problem).
"""
import torch
from torch.nn.modules import module as _module

from ..functional import activation as A
from ..functional._common import _compiling, _functorch_active
from ..functional.stack import dense_stack
from . import activation as act
from .linear import Linear

# twin activation class -> (δ Function, its extra args from the module)
_ACTS = {
    act.ReLU: lambda m: (A.ReLU, ()),
    act.Sigmoid: lambda m: (A.Sigmoid, ()),
    act.Tanh: lambda m: (A.Tanh, ()),
    act.GELU: lambda m: (A.GELU, (m.approximate,)),
    act.SiLU: lambda m: (A.SiLU, ()),
    act.LeakyReLU: lambda m: (A.LeakyReLU, (float(m.negative_slope),)),
}
_GLOBAL_HOOKS = tuple(getattr(_module, n) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks")
                      if hasattr(_module, n))


def _plain(m) -> bool:
    """No hook on the module and its forward is its class's."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None) or "forward" in m.__dict__)


class Sequential(torch.nn.Sequential):
    def forward(self, input):
        mods = list(self._modules.values())
        if (len(mods) < 3 or not isinstance(input, torch.Tensor) or not torch.is_grad_enabled()
                or any(_GLOBAL_HOOKS) or _functorch_active is None or _functorch_active()
                or (_compiling is not None and _compiling())):
            return super().forward(input)
        i, n = 0, len(mods)
        while i < n:
            layers, j = [], i
            while j < n and type(mods[j]) is Linear and _plain(mods[j]) and "weight" in mods[j]._parameters:
                p = mods[j]._parameters  # (m.weight goes through Module.__getattr__: 10x slower)
                nxt = mods[j + 1] if j + 1 < n else None
                make = _ACTS.get(type(nxt)) if nxt is not None and _plain(nxt) else None
                layers.append((p["weight"], p["bias"], make(nxt) if make else None))
                j += 2 if make else 1
            if len(layers) >= 2 and _chains(input, layers):
                try:
                    input = dense_stack(input, layers)
                    i = j
                    continue
                except RuntimeError:  # dtype or device mixes: the per-layer path raises a clear error
                    pass
            input = mods[i](input)
            i += 1
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
