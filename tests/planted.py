"""Planted bugs for the checker's own tests: modules that are natively torch layers, registered with a δ
twin whose backward is wrong, so an audit must FAIL on them and name them."""
import torch

import torchbp
from torchbp.functional import DeltaFunction


class _WrongTanh(DeltaFunction):
    """tanh with δ_z = 1.5 · δ ⊙ (1 − a²): the right formula, 1.5× too large."""

    @staticmethod
    def forward(z):
        return torch.tanh(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, delta):
        (a,) = ctx.saved_tensors
        return 1.5 * delta * (1 - a * a)


class PlantedTanh(torch.nn.Tanh):
    """Natively a Tanh; its registered twin's δ is 1.5× too large (a throwaway subclass, so the real
    Tanh twin is untouched)."""


@torchbp.register(PlantedTanh)
class _PlantedTanhTwin(PlantedTanh):
    def forward(self, input):
        return _WrongTanh.apply(input)


def wrong_linear_function(input_scale=1.0, weight_scale=1.0):
    """A linear δ Function whose δ to the input is ``input_scale``× and ∂J/∂W ``weight_scale``× the right one
    (∂J/∂b right)."""
    class WrongLinearFunction(DeltaFunction):
        @staticmethod
        def forward(x, w, b):
            return torch.nn.functional.linear(x, w, b)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])

        @staticmethod
        def backward(ctx, d):
            x, w = ctx.saved_tensors
            d2, x2 = d.reshape(-1, d.shape[-1]), x.reshape(-1, x.shape[-1])
            return (input_scale * d @ w, weight_scale * d2.T @ x2,
                    d2.sum(0) if ctx.needs_input_grad[2] else None)
    return WrongLinearFunction


_WrongLinear = wrong_linear_function(input_scale=1.5)


class WrongLinear(torch.nn.Linear):
    """Natively a Linear; its registered twin's δ to the input is 1.5× too large."""


@torchbp.register(WrongLinear)
class _WrongLinearTwin(WrongLinear):
    def forward(self, x):
        return _WrongLinear.apply(x, self.weight, self.bias)
