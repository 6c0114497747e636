"""The audit's default losses: the derivation's ½‖y − h‖² with a target, a seeded <v, output> without."""
from __future__ import annotations

import torch

from .capture import differentiable, leaves


def half_squared_error(h, y):
    """The derivation's cost ½‖y − h‖² per example, mean over the batch (native ops)."""
    d = h - y
    if d.dim() == 0:
        return 0.5 * d * d
    if d.shape[0] == 0:  # an empty batch: J = 0 (the mean over no examples would be NaN)
        return 0.5 * (d * d).sum()
    return 0.5 * (d * d).reshape(d.shape[0], -1).sum(1).mean()


class InnerProduct:
    """<v, output> with v seeded, of each floating output's shape, rounded to the audit dtype (so the
    float64 oracle sees exactly the same v)."""

    def __init__(self, seed, dtype):
        self.seed, self.dtype, self.vs = seed, dtype, {}

    def __call__(self, out, target=None):
        total = None
        for path, t in leaves(out):
            if not differentiable(t):
                continue
            key = (path, tuple(t.shape))
            if key not in self.vs:
                g = torch.Generator().manual_seed(self.seed + len(self.vs))
                # modes off: inside the float64 oracle's pass (when it runs first), float64-throughout
                # would turn the rounding to the audit dtype into a no-op
                with torch._C.DisableTorchFunction():
                    self.vs[key] = torch.randn(t.shape, generator=g, dtype=torch.float64).to(self.dtype).double()
            term = (self.vs[key].to(device=t.device, dtype=t.dtype) * t).sum()
            total = term if total is None else total + term
        if total is None:
            raise RuntimeError("torchbp.audit: the model's output holds no tensor that requires grad")
        return total


def losses_for(loss_fn, target, seed, dtype):
    """(loss for the reference side, loss for the subject side)."""
    if loss_fn is not None:
        return loss_fn, loss_fn
    if target is None:
        inner = InnerProduct(seed, dtype)
        return inner, inner
    from .. import functional
    ours = getattr(functional, "half_squared_error", None)
    return half_squared_error, (ours if ours is not None else half_squared_error)
