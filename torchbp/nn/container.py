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
from ..functional._common import _CASTABLE, _autocast_state, _compiling, _functorch_active
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
        i = 0
        while i < len(mods):
            layers, j = [], i
            while j < len(mods) and type(mods[j]) is Linear and _plain(mods[j]):
                lin = mods[j]
                W, b = lin.weight, lin.bias
                nxt = mods[j + 1] if j + 1 < len(mods) else None
                make = _ACTS.get(type(nxt)) if nxt is not None and _plain(nxt) else None
                layers.append((W, b, make(nxt) if make else None))
                j += 2 if make else 1
            if len(layers) >= 2 and self._fits(input, layers, _autocast_state(input.device.type) is not None):
                input = dense_stack(input, layers)
                i = j
            else:
                input = mods[i](input)
                i += 1
        return input

    @staticmethod
    def _fits(x, layers, autocast) -> bool:
        """Shapes chain, one device, one floating dtype (any castable ones under autocast): otherwise the
        per-layer path (and its errors)."""
        if not x.is_floating_point() or x.dim() < 1:
            return False
        width, dev = x.shape[-1], x.device
        same = (lambda t: t.dtype in _CASTABLE) if autocast and x.dtype in _CASTABLE else (lambda t: t.dtype == x.dtype)
        for W, b, _ in layers:
            if (W.dim() != 2 or W.shape[1] != width or not same(W) or W.device != dev
                    or (b is not None and (b.shape != W.shape[:1] or not same(b) or b.device != dev))):
                return False
            width = W.shape[0]
        return True


TWINS = {torch.nn.Sequential: Sequential}
__all__ = ["Sequential"]
