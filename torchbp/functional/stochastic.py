"""Random layers beside dropout: alpha dropout (elementwise and per channel) and RReLU.

Each draws its random numbers exactly as native draws them (the same ops on the same generator, or native's own
forward kernel), so the same RNG state gives the same output; backward is the formula with the saved draws.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor
from .dropout import dropout as _dropout

_ALPHA = 1.7580993408473766  # SELU's −λα: alpha dropout's value for a dropped unit is −λα, before the affine fix


class AlphaDropout(DeltaFunction):
    """z = a ⊙ (s·m) + s α' (m − 1 + p),  m ~ Bernoulli(1 − p) (per element, or per (sample, channel) for the
    feature variant),  α' = λα,  s = 1 / √((α'² p + 1)(1 − p))  (keeps SELU's zero mean and unit variance).

    backward: δ_a = δ ⊙ s·m  (the affine shift has no a in it).
    """

    @staticmethod
    def forward(a, p, feature, inplace):
        # at::_dropout_impl's alpha path, op for op: the same draws, the same bits
        noise = a.new_empty(a.shape[:2] + (1,) * (a.dim() - 2)) if feature else torch.empty_like(a)
        noise.bernoulli_(1 - p)
        s = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1) * (1 - p))
        b = noise.add(-1).mul_(_ALPHA * s).add_(_ALPHA * s * p)
        noise.mul_(s)
        return (a.mul_(noise) if inplace else a.mul(noise)).add_(b), noise

    @staticmethod
    def setup_context(ctx, inputs, output):
        if inputs[3]:
            ctx.mark_dirty(inputs[0])
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, delta, _dnoise):
        (noise,) = ctx.saved_tensors
        return delta * noise, None, None, None


def _alpha(op, input, p, training, inplace, feature):
    check_tensor(op, "input", input)
    if p < 0.0 or p > 1.0:  # the type and message native gives
        raise ValueError(f"torchbp.functional.{op}: dropout probability has to be between 0 and 1, but got {p}")
    if p == 0 or not training or input.numel() == 0:
        return input  # native returns its input itself here
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    check(not feature or input.dim() >= 2, op, "Feature dropout requires at least 2 dimensions in the input")
    if p == 1:  # native: a times a zero scalar, no draws; δ_a = δ · 0 (dropout's own p = 1 case)
        return _dropout(input, 1.0, True, inplace)
    return AlphaDropout.apply(input, float(p), feature, bool(inplace))[0]


def alpha_dropout(input, p=0.5, training=False, inplace=False):
    """δ twin of ``torch.nn.functional.alpha_dropout``."""
    return _alpha("alpha_dropout", input, p, training, inplace, False)


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False):
    """δ twin of ``torch.nn.functional.feature_alpha_dropout``: one draw per (sample, channel)."""
    return _alpha("feature_alpha_dropout", input, p, training, inplace, True)


class RReLU(DeltaFunction):
    """z = a where a > 0, r·a elsewhere; r ~ U(lower, upper) per element in training (native's kernel draws
    it), r = (lower + upper)/2 in eval.

    backward: δ_a = δ ⊙ r_a, r_a = 1 where a > 0 and the slope r elsewhere (training: the draws, saved as
    native saves them, its noise tensor; eval: from the output's sign, which is a's).
    """

    @staticmethod
    def forward(a, lower, upper, training, inplace):
        if not training:
            return (F.leaky_relu_ if inplace else F.leaky_relu)(a, (lower + upper) / 2), None
        noise = torch.empty_like(a)
        fn = torch._C._nn.rrelu_with_noise_ if inplace else torch._C._nn.rrelu_with_noise
        return fn(a, noise, lower, upper, True), noise

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, lower, upper, ctx.training, inplace = inputs
        ctx.slope = (lower + upper) / 2
        if inplace:
            ctx.mark_dirty(a)
        ctx.set_materialize_grads(False)
        if output[1] is not None:
            ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1] if ctx.training else output[0])

    @staticmethod
    def backward(ctx, delta, _dnoise):
        (saved,) = ctx.saved_tensors
        if ctx.training:
            return delta * saved, None, None, None, None
        return torch.where(saved > 0, delta, delta * ctx.slope), None, None, None, None


def rrelu(input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    """δ twin of ``torch.nn.functional.rrelu``."""
    check_tensor("rrelu", "input", input)
    check(input.is_floating_point(), "rrelu", f"input must be floating point, got {input.dtype}")
    check(lower <= upper, "rrelu", f"lower ({lower}) must not exceed upper ({upper})")
    check(lower >= 0, "rrelu", f"lower ({lower}) must not be negative (the eval slope's sign is read back)")
    return RReLU.apply(input, float(lower), float(upper), bool(training), bool(inplace))[0]


def _rrelu_native(input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None):
    check(generator is None, "rrelu", "an explicit generator is not supported; use the default generator")
    return rrelu(input, lower, upper, training)


# native callable -> δ twin with the same signature; read by torchbp.registry (F.alpha_dropout and
# F.feature_alpha_dropout are Python functions calling _VF; F.rrelu calls torch.rrelu)
ROUTES = {F.alpha_dropout: alpha_dropout, F.feature_alpha_dropout: feature_alpha_dropout, F.rrelu: rrelu,
          torch.rrelu: _rrelu_native,
          torch.rrelu_: lambda input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None:
          rrelu(input, lower, upper, training, True) if generator is None else _rrelu_native(input, generator=generator)}

__all__ = ["alpha_dropout", "feature_alpha_dropout", "rrelu"]
