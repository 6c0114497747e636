"""torchbp.functional.sampling: affine_grid and grid_sample (bilinear and nearest, every padding mode, both
align_corners), points outside the input and on pixel centres."""
import itertools

import torch
import torch.nn.functional as F

import torchbp.functional.sampling as tbs
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Case

DT = torch.float64
NO_VMAP = {"vmap": "grid_sample and affine_grid take the batch dim N whole (4-D / 5-D inputs, size[0] = N)"}


def uniform(*shape, lo=-1.0, hi=1.0):
    return (torch.rand(*shape, dtype=DT) * (hi - lo) + lo).requires_grad_()


def sample_args():
    return uniform(2, 3, 5, 6, lo=-2, hi=2), uniform(2, 4, 7, 2, lo=-3.5, hi=3.5)  # outside, reflected ≤ 3 times


def on_pixel_centres():
    grid = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]]], dtype=DT, requires_grad=True)
    return uniform(1, 2, 4, 4), grid


CASES = []
for align_corners in (False, True):
    for size in ([2, 3, 4, 5], [2, 1, 3, 4, 2]):
        theta = (lambda: (uniform(2, 2, 3),)) if len(size) == 4 else (lambda: (uniform(2, 3, 4),))
        CASES.append(Case(f"sampling.affine_grid[{size},align_corners={align_corners}]", tbs.affine_grid,
                          F.affine_grid, theta, dict(size=size, align_corners=align_corners),
                          checks=SWEEP[FLOAT64] + (GRADCHECK,) + SWEEP[LOW], low_dtypes=(torch.float32,),
                          skip=NO_VMAP, why="low precision in float32 only (theta's 6 numbers: bfloat16 says little)"))

for mode, padding_mode, align_corners in itertools.product(["bilinear", "nearest"], ["zeros", "border", "reflection"],
                                                           [False, True]):
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    name = f"sampling.grid_sample[{mode},{padding_mode},align_corners={align_corners}]"
    CASES.append(Case(f"{name}-2x3x5x6", tbs.grid_sample, F.grid_sample, sample_args, kw,
                      checks=SWEEP[FLOAT64] + SWEEP[LOW], skip=NO_VMAP, delta_ran=True))
    if mode == "bilinear":
        CASES += [Case(f"{name}-1x2x3x4", tbs.grid_sample, F.grid_sample,
                       lambda: (uniform(1, 2, 3, 4), uniform(1, 2, 3, 2, lo=-1.2, hi=1.2)), kw, checks=(GRADCHECK,)),
                  Case(f"{name}-pixel-centres", tbs.grid_sample, F.grid_sample, on_pixel_centres, kw,
                       checks=SWEEP[FLOAT64], skip=NO_VMAP, delta_ran=True)]
