"""torchbp.functional.upsampling: interpolate (every mode, size and scale form) and pixel (un)shuffle."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, VMAP, Bad, Case, kw_id

SHAPES = {1: (2, 3, 5), 2: (2, 3, 4, 5), 3: (1, 2, 3, 4, 5)}
MODES = [("nearest", 1), ("nearest", 2), ("nearest", 3), ("nearest-exact", 2), ("linear", 1), ("bilinear", 2),
         ("trilinear", 3), ("bicubic", 2), ("area", 1), ("area", 2)]
SIZES = [{"scale_factor": 2}, {"scale_factor": 1.7}, {"scale_factor": 0.6},
         {"scale_factor": 1.3, "recompute_scale_factor": True}, {"size": "odd"}]



def vmap_skip(mode, n, kw):
    """interpolate has no unbatched form: vmap's slice is read as one spatial dim fewer, which only the
    modes of any rank take, and only with a scalar scale_factor."""
    if mode in ("nearest", "nearest-exact", "area") and n >= 2 and "size" not in kw:
        return {}
    return {VMAP: "a slice has one spatial dim fewer, which this mode or size does not take"}


CASES = []
for mode, n in MODES:
    for size_kw in SIZES:
        size = {"size": (7, 3, 4)[:n]} if size_kw.get("size") == "odd" else dict(size_kw)
        for align_corners in ((None,) if mode in ("nearest", "nearest-exact", "area") else (False, True)):
            kw = {"mode": mode, **size, "align_corners": align_corners}
            CASES.append(Case(f"upsampling.interpolate-{n}d[{kw_id(kw)}]", tbf.interpolate, F.interpolate,
                              lambda n=n: (torch.randn(SHAPES[n], dtype=torch.float64, requires_grad=True),), kw,
                              checks=SWEEP[FLOAT64], skip=vmap_skip(mode, n, kw)))
# per-example gradients of every mode: a batch of whole (N, C, ...) inputs, one (N, C, ...) per example
for mode, n in MODES:
    for size_kw in ({"scale_factor": 1.7}, {"size": "odd"}):
        size = {"size": (7, 3, 4)[:n]} if size_kw.get("size") == "odd" else dict(size_kw)
        for align_corners in ((None,) if mode in ("nearest", "nearest-exact", "area") else (False, True)):
            kw = {"mode": mode, **size, "align_corners": align_corners}
            CASES.append(Case(f"upsampling.interpolate-batch-of-{n}d[{kw_id(kw)}]", tbf.interpolate, F.interpolate,
                              lambda n=n: (torch.randn((3, *SHAPES[n]), dtype=torch.float64, requires_grad=True),),
                              kw, checks=(VMAP,)))
for mode, kw in [("nearest", {"scale_factor": 1.5}), ("linear", {"size": 7}),
                 ("bilinear", {"scale_factor": (1.5, 0.7), "align_corners": True}),
                 ("bicubic", {"size": (2, 5)}), ("bicubic", {"scale_factor": 2.5}),
                 ("trilinear", {"scale_factor": 1.5})]:
    n = {"linear": 1, "trilinear": 3}.get(mode, 2)
    kw = {"mode": mode, **kw}
    CASES.append(Case(f"upsampling.interpolate-{n}d[{kw_id(kw)}]", tbf.interpolate, F.interpolate,
                      lambda n=n: (torch.randn((1, 2, 3, 3, 2)[:n + 2], dtype=torch.float64, requires_grad=True),), kw,
                      checks=(GRADCHECK,)))
for mode in ("nearest", "bilinear", "bicubic"):
    CASES.append(Case(f"upsampling.interpolate-2x3x6x5[scale_factor=1.7,mode={mode}]", tbf.interpolate,
                      F.interpolate, lambda: (torch.randn(2, 3, 6, 5, requires_grad=True),),
                      {"scale_factor": 1.7, "mode": mode}, checks=SWEEP[LOW]))
CASES += [
    Case("upsampling.pixel_shuffle-2x8x3x4", tbf.pixel_shuffle, F.pixel_shuffle,
         lambda: (torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True), 2), checks=SWEEP[FLOAT64]),
    Case("upsampling.pixel_unshuffle-2x2x6x4", tbf.pixel_unshuffle, F.pixel_unshuffle,
         lambda: (torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True), 2), checks=SWEEP[FLOAT64]),
    Case("upsampling.pixel_shuffle-1x4x2x2", tbf.pixel_shuffle, F.pixel_shuffle,
         lambda: (torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True), 2), checks=(GRADCHECK,)),
]

# --- refused inputs --------------------------------------------------------------------------------------
BAD = [
    Bad("upsampling.interpolate-antialias", tbf.interpolate, None,
        lambda: (torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True),),
        r"torchbp.functional.interpolate: antialias", {"scale_factor": 0.5, "mode": "bilinear", "antialias": True},
        why="torch takes antialias=True; the δ formulas have no anti-aliasing filter, so torchbp refuses it"),
    Bad("upsampling.interpolate-no-size", tbf.interpolate, F.interpolate,
        lambda: (torch.randn(2, 2, 3, 3, dtype=torch.float64),), r"torchbp.functional.interpolate",
        {"mode": "nearest"}),  # neither size nor scale_factor: native's error, named
]
