"""Conventions of native autograd that changed between the torch versions torchbp supports: the δ formulas
follow the torch they run on, and these tests say which convention this torch has."""
import torch

from torchbp.functional._common import CLAMP_PASSES_AT_BOUND, above_bound


def test_clamp_at_its_bound_as_native():
    # max(0, u) at u = 0: gradient 1 on torch < 2.14, 0 from 2.14 on
    u = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(u.clamp_min(0).sum(), u)
    assert CLAMP_PASSES_AT_BOUND == bool(g[0] == 1)
    assert torch.equal(above_bound(torch.tensor([-1.0, 0.0, 1.0])).double(), torch.tensor([0.0, g[0].item(), 1.0]))
