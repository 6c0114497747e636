"""affine_grid and grid_sample: a spatial transformer routed whole, and the modes without a δ formula left to
native (values, gradients and the modes handled, on every padding and align_corners: tests/cases/sampling.py)."""
import torch
import torch.nn.functional as F

import torchbp
from util import grad_fn_names

DT = torch.float64


def test_a_spatial_transformer_route_and_other_modes_run_native():
    x = torch.randn(1, 2, 4, 4, dtype=DT, requires_grad=True)
    theta = torch.randn(1, 2, 3, dtype=DT, requires_grad=True)
    with torchbp.manual_backward():
        y = F.grid_sample(x, F.affine_grid(theta, [1, 2, 3, 3], False), align_corners=False)
    names = grad_fn_names(y)
    assert names[0] == "GridSampleBackward" and "AffineGridBackward" in names
    with torchbp.manual_backward():  # a mode without a δ formula here: native's own op and gradient
        z = F.grid_sample(x, F.affine_grid(theta, [1, 2, 3, 3], False), mode="bicubic", align_corners=False)
    assert grad_fn_names(z)[0].startswith("GridSampler2DBackward")
