"""δ interpolate (nn.Upsample) and pixel shuffle beyond the common matrix (tests/cases/upsampling.py drives every
mode, size and scale form in float64, gradcheck and gradgradcheck, low precision, autocast, vmap and routing,
and the refused inputs): the twins in a model, routing, an audit."""
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp


def test_twins_and_routes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UpsamplingNearest2d / UpsamplingBilinear2d are deprecated
        native = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.PixelShuffle(2), nn.Upsample(scale_factor=1.5),
                               nn.UpsamplingBilinear2d(size=(9, 7)), nn.UpsamplingNearest2d(scale_factor=2),
                               nn.PixelUnshuffle(2), nn.Upsample(size=(5, 4), mode="bicubic")).double()
    twin = torchbp.swap(copy.deepcopy(native))
    assert all(type(m) is not type(n) and isinstance(m, type(n)) for m, n in zip(twin, native))
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    ys, yn = twin(x), native(x)
    assert torch.equal(ys, yn)
    gs = torch.autograd.grad(ys.square().sum(), [x, *twin.parameters()])
    gn = torch.autograd.grad(yn.square().sum(), [x, *native.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(gs, gn))
    report = torchbp.audit(native, x.detach())
    assert report.ok and report.coverage == 1.0
    with torchbp.manual_backward():
        assert type(F.interpolate(x, scale_factor=2, mode="bilinear").grad_fn).__name__ == "InterpolateBackward"
        assert type(F.pixel_shuffle(x.repeat(1, 2, 1, 1), 2).grad_fn).__name__ == "PixelShuffleBackward"
