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
