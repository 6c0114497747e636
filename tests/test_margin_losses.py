"""multi_margin, multilabel_margin and triplet_margin_with_distance losses: the routed triplet loss's default
distance is a δ Function too (values, gradients, twins, kinks, refusals: tests/cases/margin.py)."""
import torch
import torch.nn.functional as F

import torchbp
from util import grad_fn_names


def test_routed_triplet_loss_routes_its_default_distance():
    a, p, n = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with torchbp.manual_backward():
        y = F.triplet_margin_with_distance_loss(a, p, n)
    names = grad_fn_names(y)
    assert names[0] == "TripletHingeBackward" and "PairwiseDistanceBackward" in names, names
