"""affine_grid and grid_sample against native: float64 for every align_corners / mode / padding handled, points
outside the input and on pixel edges, gradcheck/gradgradcheck, low precision, routes; other modes run native."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional.sampling as tbs
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(31)


def _r(*shape, lo=-1.0, hi=1.0):
    return (torch.rand(*shape, dtype=DT, generator=_GEN) * (hi - lo) + lo).requires_grad_()


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 1, 3, 4, 2]])
def test_affine_grid(align_corners, size):
    theta = _r(2, 2, 3) if len(size) == 4 else _r(2, 3, 4)
    f = lambda t: tbs.affine_grid(t, size, align_corners)  # noqa: E731
    assert_matches_native(f, lambda t: F.affine_grid(t, size, align_corners), (theta,))
    assert_matches_native(f, lambda t: F.affine_grid(t, size, align_corners), (theta,), dtype=torch.float32)
    gradchecks(f, (theta,))


@pytest.mark.parametrize("mode,padding_mode,align_corners",
                         list(itertools.product(["bilinear", "nearest"], ["zeros", "border", "reflection"], [False, True])))
def test_grid_sample(mode, padding_mode, align_corners):
    x = _r(2, 3, 5, 6, lo=-2, hi=2)
    grid = _r(2, 4, 7, 2, lo=-3.5, hi=3.5)  # points outside the input, reflected up to three times
    f = lambda a, b: tbs.grid_sample(a, b, mode, padding_mode, align_corners)  # noqa: E731
    nf = lambda a, b: F.grid_sample(a, b, mode, padding_mode, align_corners)  # noqa: E731
    assert_matches_native(f, nf, (x, grid))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(f, nf, (x, grid), dtype=dtype)
    if mode == "bilinear":
        gradchecks(f, (_r(1, 2, 3, 4), _r(1, 2, 3, 2, lo=-1.2, hi=1.2)))


def test_grid_sample_on_pixel_centres_and_a_spatial_transformer_route():
    x = _r(1, 2, 4, 4)
    grid = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]]], dtype=DT, requires_grad=True)
    for ac, pm in itertools.product([False, True], ["zeros", "border", "reflection"]):
        assert_matches_native(lambda a, b: tbs.grid_sample(a, b, "bilinear", pm, ac),
                              lambda a, b: F.grid_sample(a, b, "bilinear", pm, ac), (x, grid))
    theta = _r(1, 2, 3)
    with torchbp.manual_backward():
        y = F.grid_sample(x, F.affine_grid(theta, [1, 2, 3, 3], False), align_corners=False)
    names = grad_fn_names(y)
    assert names[0] == "GridSampleBackward" and "AffineGridBackward" in names
    with torchbp.manual_backward():  # a mode without a δ formula here: native's own op and gradient
        z = F.grid_sample(x, F.affine_grid(theta, [1, 2, 3, 3], False), mode="bicubic", align_corners=False)
    assert grad_fn_names(z)[0].startswith("GridSampler2DBackward")
