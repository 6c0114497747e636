"""Planted bugs for the checker's own tests: modules that are natively torch layers, registered with a δ
twin whose backward is wrong, so an audit must FAIL on them and name them."""
import torch

import torchbp
from torchbp.functional import DeltaFunction


def tanh_function(scale=1.0, noise=0.0, base=DeltaFunction):
    """A tanh Function whose backward is δ_z = scale · δ ⊙ (1 − a²), times (1 + noise · u) with u ~ U[0, 1) drawn in
    each backward (last bits that change from one backward to the next, like atomics on a GPU). scale ≠ 1 is a
    planted bug; ``base=torch.autograd.Function`` makes it a user's hand-written backward rather than a δ."""
    class TanhFunction(base):
        @staticmethod
        def forward(z):
            return torch.tanh(z)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, delta):
            (a,) = ctx.saved_tensors
            g = scale * delta * (1 - a * a)
            return g * (1 + noise * torch.rand((), dtype=g.dtype)) if noise else g
    return TanhFunction


def tanh_twin(function):
    """Class decorator: register, for the decorated throwaway subclass of torch.nn.Tanh (so the real Tanh twin
    is untouched), a twin whose forward is ``function.apply``."""
    def decorate(cls):
        @torchbp.register(cls)
        class _Twin(cls):
            def forward(self, input):
                return function.apply(input)
        return cls
    return decorate


@tanh_twin(tanh_function(scale=1.5))
class PlantedTanh(torch.nn.Tanh):
    """Natively a Tanh; its registered twin's δ is 1.5× too large."""


class BadTanh(torch.nn.Tanh):
    """A user's Tanh with a hand-written backward 1.5× too large (a torch.autograd.Function, no twin): the
    subject an audit against a native reference must fail."""
    function = tanh_function(scale=1.5, base=torch.autograd.Function)

    def forward(self, x):
        return self.function.apply(x)


def source(*objects) -> str:
    """The source text of these planted objects, for a module written into a temporary project (it must import
    torch, torchbp and DeltaFunction itself)."""
    import inspect
    import textwrap
    return "\n\n".join(textwrap.dedent(inspect.getsource(o)) for o in objects)


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
