"""torchbp.functional.pooling: max, average and adaptive pooling, as modules against their δ twins."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, LOW_DTYPES, SWEEP, VMAP, Bad, Case, kw_id, module_case, shape_id

POOL_CASES = [
    (nn.MaxPool1d, dict(kernel_size=3), (2, 3, 10)),
    (nn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 10)),
    (nn.MaxPool1d, dict(kernel_size=2, stride=1, dilation=2), (3, 9)),
    (nn.MaxPool2d, dict(kernel_size=2), (2, 3, 8, 8)),
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 7)),
    (nn.MaxPool2d, dict(kernel_size=(3, 2), stride=(2, 1), ceil_mode=True), (2, 3, 10, 7)),
    (nn.MaxPool2d, dict(kernel_size=3, stride=1, dilation=2, padding=1), (3, 8, 8)),
    (nn.AvgPool1d, dict(kernel_size=3), (2, 3, 10)),
    (nn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 10)),
    (nn.AvgPool1d, dict(kernel_size=4, stride=3, padding=2, count_include_pad=False, ceil_mode=True), (3, 11)),
    (nn.AvgPool2d, dict(kernel_size=2), (2, 3, 8, 8)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 7)),
    (nn.AvgPool2d, dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True), (2, 3, 10, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (3, 10, 9)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, divisor_override=4), (2, 3, 9, 9)),
    (nn.AdaptiveAvgPool1d, dict(output_size=4), (2, 3, 10)),
    (nn.AdaptiveAvgPool1d, dict(output_size=7), (3, 5)),  # upsampling windows overlap
    (nn.AdaptiveAvgPool2d, dict(output_size=1), (2, 3, 7, 6)),  # global pooling: δ times one (H, W) map
    (nn.AdaptiveAvgPool1d, dict(output_size=1), (3, 5)),
    (nn.AvgPool2d, dict(kernel_size=(4, 3), padding=1, count_include_pad=False), (2, 3, 3, 2)),  # one window
    (nn.AdaptiveAvgPool2d, dict(output_size=(1, None)), (2, 3, 4, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(3, 4)), (2, 3, 7, 10)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(None, 2)), (3, 7, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=5), (2, 3, 3, 4)),
    (nn.AdaptiveMaxPool1d, dict(output_size=4), (2, 3, 10)),
    (nn.AdaptiveMaxPool1d, dict(output_size=3), (3, 9)),  # disjoint windows: plain scatter
    (nn.AdaptiveMaxPool2d, dict(output_size=(3, 4)), (2, 3, 7, 10)),
    (nn.AdaptiveMaxPool2d, dict(output_size=(None, 2)), (3, 7, 5)),
    (nn.AdaptiveMaxPool2d, dict(output_size=5), (2, 3, 3, 4)),  # windows overlap: scatter_add
]

POOL_GRADCHECK = [  # small: gradgradcheck costs O(numel²)
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (1, 2, 5, 4)),
    (nn.MaxPool2d, dict(kernel_size=2, ceil_mode=True), (1, 2, 5, 4)),  # disjoint windows: plain scatter
    (nn.MaxPool1d, dict(kernel_size=2, stride=3, dilation=2), (2, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (1, 2, 5, 4)),
    (nn.AvgPool1d, dict(kernel_size=2, padding=1), (2, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(2, 3)), (1, 2, 5, 4)),
    (nn.AdaptiveAvgPool2d, dict(output_size=1), (1, 2, 3, 4)),
]


def distinct(shape):
    """Distinct, well-separated values: no max-pool ties within a finite-difference step."""
    return (torch.randperm(torch.Size(shape).numel(), dtype=torch.float64).view(shape) / 10).requires_grad_()


LOW_CASES = [POOL_CASES[4], POOL_CASES[12], POOL_CASES[-3]]



def unbatched(cls, kw, shape):
    """VMAP's skip for an unbatched input: its slice loses the channel dim, which no pooling takes."""
    return {VMAP: "an unbatched input's slice has no channel dim"} if len(shape) == int(cls.__name__[-2]) + 1 else {}


CASES = ([module_case("pooling", *c, SWEEP[FLOAT64], skip=unbatched(*c)) for c in POOL_CASES]
         + [module_case("pooling", *c, [GRADCHECK], x=distinct if c[0] in (nn.MaxPool1d, nn.MaxPool2d) else None)
            for c in POOL_GRADCHECK]
         + [module_case("pooling", *c, SWEEP[LOW]) for c in LOW_CASES])
CASES += [
    Case("pooling.adaptive_max_pool2d-1x2x5x4-(3, 2)", tbf.adaptive_max_pool2d, F.adaptive_max_pool2d,
         lambda: (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True), (3, 2)), checks=(GRADCHECK,)),
    Case("pooling.adaptive_max_pool2d-2x3x7x6-(3, 4)", tbf.adaptive_max_pool2d, F.adaptive_max_pool2d,
         lambda: (torch.randn(2, 3, 7, 6, requires_grad=True), (3, 4)), checks=SWEEP[LOW], devices=("cpu",)),
]


# --- 3-D (video models): CPU only, as before; a dtype native's CPU kernel lacks is left to tests/test_pooling.py
def native_runs(cls, kw, shape, dtype):
    try:
        cls(**kw)(torch.zeros(shape, dtype=dtype))
    except NotImplementedError:
        return False
    return True


POOL3D_CASES = [
    (nn.MaxPool3d, dict(kernel_size=2), (2, 3, 4, 6, 6)),
    (nn.MaxPool3d, dict(kernel_size=3, stride=2, padding=1), (2, 2, 5, 7, 6)),
    (nn.MaxPool3d, dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (2, 3, 3, 7, 8)),  # r3d stem
    (nn.MaxPool3d, dict(kernel_size=(3, 2, 2), stride=(2, 1, 2), dilation=(1, 2, 1), ceil_mode=True),
     (2, 2, 7, 6, 5)),
    (nn.MaxPool3d, dict(kernel_size=2, stride=2), (3, 4, 6, 4)),  # unbatched
    (nn.AvgPool3d, dict(kernel_size=2), (2, 3, 4, 6, 6)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1), (2, 2, 5, 7, 6)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 7, 6)),
    (nn.AvgPool3d, dict(kernel_size=(2, 3, 2), stride=2, padding=1, ceil_mode=True), (2, 2, 6, 7, 5)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 7, 6, 8)),
    (nn.AvgPool3d, dict(kernel_size=2, stride=2, divisor_override=3), (2, 2, 4, 4, 6)),
    (nn.AvgPool3d, dict(kernel_size=(3, 4, 2)), (2, 2, 3, 4, 2)),  # one window
    (nn.AdaptiveAvgPool3d, dict(output_size=1), (2, 3, 4, 5, 6)),  # global: r3d_18's head
    (nn.AdaptiveAvgPool3d, dict(output_size=(2, 3, 4)), (2, 3, 5, 7, 9)),
    (nn.AdaptiveAvgPool3d, dict(output_size=(None, 2, 1)), (3, 4, 5, 6)),
    (nn.AdaptiveAvgPool3d, dict(output_size=5), (1, 2, 3, 4, 3)),  # upsampling windows overlap
    (nn.AdaptiveMaxPool3d, dict(output_size=(2, 3, 4)), (2, 3, 5, 7, 9)),
    (nn.AdaptiveMaxPool3d, dict(output_size=(2, 2, 2)), (2, 4, 4, 6)),  # disjoint: plain scatter
    (nn.AdaptiveMaxPool3d, dict(output_size=4), (1, 2, 3, 5, 3)),  # overlapping: scatter_add
]

POOL3D_GRADCHECK = [  # (δ function, kwargs, input shape)
    (tbf.max_pool3d, dict(kernel_size=2, stride=1, padding=1), (1, 2, 3, 3, 3)),  # overlapping windows
    (tbf.max_pool3d, dict(kernel_size=2), (1, 2, 2, 4, 2)),
    (tbf.avg_pool3d, dict(kernel_size=2, stride=1, padding=1, count_include_pad=False), (1, 2, 3, 3, 2)),
    (tbf.avg_pool3d, dict(kernel_size=3, ceil_mode=True, stride=2), (1, 1, 4, 3, 3)),
    (tbf.adaptive_avg_pool3d, dict(output_size=(2, 1, 3)), (1, 2, 3, 3, 4)),
    (tbf.adaptive_avg_pool3d, dict(output_size=1), (1, 2, 3, 3, 2)),
    (tbf.adaptive_max_pool3d, dict(output_size=(2, 2, 3)), (1, 2, 3, 3, 4)),
]

for cls, kw, shape in POOL3D_CASES:
    dtypes = tuple(d for d in LOW_DTYPES[:2] if native_runs(cls, kw, shape, d))
    CASES.append(module_case("pooling", cls, kw, shape, SWEEP[FLOAT64] + SWEEP[LOW], low_dtypes=dtypes,
                             devices=("cpu",), skip=unbatched(cls, kw, shape),
                             why="float16 not checked in 3-D; a dtype without a native CPU kernel: see test_pooling"))
for fn, kw, shape in POOL3D_GRADCHECK:
    CASES.append(Case(f"pooling.{fn.__name__}[{kw_id(kw)}]-{shape_id(shape)}", fn, None,
                      lambda shape=shape: (torch.randn(shape, dtype=torch.float64, requires_grad=True),), kw,
                      checks=(GRADCHECK,)))


# --- every routed native (torch.nn.functional's, torch's, torch._C._nn's) against the δ its route names ----
def _routes():
    import re

    from torchbp.functional.pooling import ROUTES

    def prefix(fn):
        return next(name for mod, name in ((F, "F"), (torch._C._nn, "torch._C._nn"), (torch, "torch"))
                    if getattr(mod, fn.__name__, None) is fn)

    out = []
    for native, ours in ROUTES.items():
        name = native.__name__
        n = int(re.search(r"(\d)d", name).group(1))
        shape = {1: (2, 3, 10), 2: (2, 3, 9, 7), 3: (2, 3, 4, 6, 5)}[n]
        rest = ({1: 4, 2: (3, 4), 3: (2, 3, 1)}[n],) if "adaptive" in name else (3, 2)
        out.append(Case(f"pooling.routed-{prefix(native)}.{name}", ours, native,
                        lambda shape=shape, rest=rest: (torch.randn(shape, dtype=torch.float64, requires_grad=True),
                                                        *rest),
                        checks=SWEEP[FLOAT64], devices=("cpu",) if n == 3 else ("cpu", "cuda")))
    return out


CASES += _routes()


# --- refused inputs --------------------------------------------------------------------------------------
def _bad(op, tag, args, match):
    return Bad(f"pooling.{op}-{tag}", getattr(tbf, op), getattr(F, op), args, f"torchbp.functional.{op}: {match}")


BAD = [
    _bad("max_pool2d", "2d", lambda: (torch.randn(5, 5), 2), r"expected 3-D \(unbatched\) or 4-D"),
    _bad("adaptive_avg_pool2d", "output_size", lambda: (torch.randn(1, 5, 5), (1, 2, 3)),
         r"output_size must be an int or a tuple of 2"),
    _bad("avg_pool1d", "kernel_size", lambda: (torch.randn(1, 5, 5), (2, 2)), r"kernel_size must be an int or a tuple of 1"),
    _bad("max_pool3d", "3d", lambda: (torch.randn(5, 5, 5), 2), r"expected 4-D \(unbatched\) or 5-D"),
    _bad("adaptive_avg_pool3d", "output_size", lambda: (torch.randn(1, 5, 5, 5), (1, 2)),
         r"output_size must be an int or a tuple of 3"),
    _bad("avg_pool3d", "kernel_size", lambda: (torch.randn(1, 5, 5, 5), (2, 2)), r"kernel_size must be an int or a tuple of 3"),
]
