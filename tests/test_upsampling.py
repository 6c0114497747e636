"""δ interpolate (nn.Upsample) and pixel shuffle against native: every mode, size and scale form in float64,
gradcheck and gradgradcheck, low precision, twins and routing."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import DEVICES, LOW, assert_matches_native, gradchecks

SHAPES = {1: (2, 3, 5), 2: (2, 3, 4, 5), 3: (1, 2, 3, 4, 5)}
MODES = [("nearest", 1), ("nearest", 2), ("nearest", 3), ("nearest-exact", 2), ("linear", 1), ("bilinear", 2),
         ("trilinear", 3), ("bicubic", 2), ("area", 1), ("area", 2)]
SIZES = [{"scale_factor": 2}, {"scale_factor": 1.7}, {"scale_factor": 0.6},
         {"scale_factor": 1.3, "recompute_scale_factor": True}, {"size": "odd"}]


def _kw(size_kw, n):
    return {"size": (7, 3, 4)[:n]} if size_kw.get("size") == "odd" else dict(size_kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size_kw", SIZES, ids=["x2", "x1.7", "x0.6", "recompute", "size"])
@pytest.mark.parametrize("mode,n", MODES, ids=[f"{m}{n}d" for m, n in MODES])
def test_interpolate_float64(mode, n, size_kw, device):
    kw = {"mode": mode, **_kw(size_kw, n)}
    for align_corners in ((None,) if mode in ("nearest", "nearest-exact", "area") else (False, True)):
        kw["align_corners"] = align_corners
        x = torch.randn(SHAPES[n], dtype=torch.float64, requires_grad=True)
        assert_matches_native(tbf.interpolate, F.interpolate, (x,), kw, device=device)


@pytest.mark.parametrize("mode,kw", [("nearest", {"scale_factor": 1.5}), ("linear", {"size": 7}),
                                     ("bilinear", {"scale_factor": (1.5, 0.7), "align_corners": True}),
                                     ("bicubic", {"size": (2, 5)}), ("bicubic", {"scale_factor": 2.5}),
                                     ("trilinear", {"scale_factor": 1.5})])
def test_interpolate_gradcheck(mode, kw):
    n = {"linear": 1, "trilinear": 3}.get(mode, 2)
    x = torch.randn((1, 2, 3, 3, 2)[:n + 2], dtype=torch.float64, requires_grad=True)
    gradchecks(tbf.interpolate, (x,), {"mode": mode, **kw})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_interpolate_low_precision(mode, dtype, device):
    assert_matches_native(tbf.interpolate, F.interpolate, (torch.randn(2, 3, 6, 5, requires_grad=True),),
                          {"scale_factor": 1.7, "mode": mode}, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_pixel_shuffle_float64_and_gradcheck(device):
    assert_matches_native(tbf.pixel_shuffle, F.pixel_shuffle, (torch.randn(2, 8, 3, 4, dtype=torch.float64,
                                                                           requires_grad=True), 2), device=device)
    assert_matches_native(tbf.pixel_unshuffle, F.pixel_unshuffle, (torch.randn(2, 2, 6, 4, dtype=torch.float64,
                                                                               requires_grad=True), 2), device=device)
    gradchecks(tbf.pixel_shuffle, (torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True), 2))


def test_twins_routes_and_refusals():
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
    with pytest.raises(RuntimeError, match="torchbp.functional.interpolate: antialias"):
        tbf.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
    with pytest.raises((RuntimeError, ValueError), match="torchbp.functional.interpolate"):
        tbf.interpolate(x, mode="nearest")  # neither size nor scale_factor: native's error, named
