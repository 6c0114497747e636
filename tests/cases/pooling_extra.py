"""torchbp.functional.pooling_extra: LPPool1d/2d/3d (every norm, ±∞ included, ceil_mode), MaxUnpool1d/2d/3d and
FractionalMaxPool2d/3d (the same random windows as native: the RNG reset before each call, or explicit samples)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.pooling_extra as tbp
from cases import FLOAT64, GRADCHECK, LOW, LOW_DTYPES, SWEEP, Bad, Case, kw_id, module_case, shape_id

DT = torch.float64
ALL = SWEEP[FLOAT64] + SWEEP[LOW]
UNBATCHED = {"vmap": "an unbatched input: vmap leaves one spatial dim too few"}


def positive(shape):
    return (torch.randn(shape, dtype=DT).abs() + 0.1).requires_grad_()  # odd/fractional powers of negatives: NaN


LP = [(1, dict(norm_type=2, kernel_size=3), (2, 3, 9)), (1, dict(norm_type=3.0, kernel_size=2, stride=1), (3, 7)),
      (2, dict(norm_type=2, kernel_size=2), (2, 3, 6, 6)),
      (2, dict(norm_type=1.5, kernel_size=(3, 2), stride=2, ceil_mode=True), (2, 2, 7, 6)),
      (2, dict(norm_type=float("inf"), kernel_size=2, stride=1), (2, 2, 4, 5)),
      (2, dict(norm_type=-float("inf"), kernel_size=2), (2, 2, 4, 4)),
      (3, dict(norm_type=2, kernel_size=2), (2, 2, 4, 4, 4)), (3, dict(norm_type=4, kernel_size=(1, 2, 2)), (2, 3, 4, 4))]

CASES = []
NO_CPU_HALF = "float32 only: avg_pool3d has no CPU bfloat16 / float16 kernel"
for n, kw, shape in LP:
    skip = UNBATCHED if len(shape) == n + 1 else {}
    CASES.append(module_case("pooling_extra", getattr(nn, f"LPPool{n}d"), kw, shape, ALL, delta_ran=True,
                             x=None if kw["norm_type"] in (2, 4, float("inf"), -float("inf")) else positive, skip=skip,
                             low_dtypes=(torch.float32,) if n == 3 else LOW_DTYPES, why=NO_CPU_HALF if n == 3 else ""))


def zero_window():
    x = torch.randn(1, 2, 4, 4, dtype=DT)
    x[0, 0, :2, :2] = 0  # a window of zeros: A = 0, δ 0 there (torch's relu of |A|)
    return x.requires_grad_(), 2, 2


CASES += [
    Case("pooling_extra.lp_pool2d-zero-window", tbp.lp_pool2d, F.lp_pool2d, zero_window, checks=SWEEP[FLOAT64]),
    Case("pooling_extra.lp_pool2d[2,2,1]-1x2x3x3", tbp.lp_pool2d, F.lp_pool2d,
         lambda: (torch.randn(1, 2, 3, 3, dtype=DT, requires_grad=True), 2, 2, 1), checks=(GRADCHECK,)),
    Case("pooling_extra.lp_pool1d[3,2]-2x4", tbp.lp_pool1d, F.lp_pool1d, lambda: (positive((2, 4)), 3, 2),
         checks=(GRADCHECK,)),
    Case("pooling_extra.lp_pool2d[inf,2]-1x1x4x4", tbp.lp_pool2d, F.lp_pool2d,
         lambda: (torch.randn(1, 1, 4, 4, dtype=DT, requires_grad=True), float("inf"), 2), checks=(GRADCHECK,)),
]

# --- MaxUnpool: the indices of native's max_pool of a random input ----------------------------------------
UNPOOL = [(1, dict(kernel_size=2), (2, 3, 8)), (1, dict(kernel_size=3, stride=2, padding=1), (3, 9)),
          (2, dict(kernel_size=2), (2, 3, 6, 6)), (2, dict(kernel_size=3, stride=2, padding=1), (2, 2, 7, 7)),
          (3, dict(kernel_size=2), (2, 2, 4, 4, 6)), (3, dict(kernel_size=2, stride=2), (2, 4, 4, 4))]


def unpool_args(n, kw, shape, explicit_size):
    x = torch.randn(shape, dtype=DT)
    pooled, idx = getattr(F, f"max_pool{n}d")(x, return_indices=True, **kw)
    return pooled.requires_grad_(), idx, list(shape[-n:]) if explicit_size else None


for n, kw, shape in UNPOOL:
    cls = getattr(nn, f"MaxUnpool{n}d")
    twin = torchbp.swap(cls(**kw))
    assert type(twin) is not cls and isinstance(twin, cls)
    for explicit_size in (False, True):
        make = lambda n=n, kw=kw, shape=shape, e=explicit_size: unpool_args(n, kw, shape, e)  # noqa: E731
        name = f"pooling_extra.{cls.__name__}[{kw_id(kw)}]-{shape_id(shape)}" + ("-size" if explicit_size else "")
        CASES.append(Case(name, twin, cls(**kw), make, checks=ALL, low_dtypes=(torch.float32, torch.bfloat16),
                          delta_ran=True, vmap_dims=(0, 0, None), skip=UNBATCHED if len(shape) == n + 1 else {},
                          why="float16: no native CPU max_pool to draw the indices in"))
        # distinct indices only (overlapping windows may pick one twice: not a derivative there)
        if explicit_size and n < 3 and kw.get("stride", kw["kernel_size"]) == kw["kernel_size"]:
            CASES.append(Case(name, getattr(tbp, f"max_unpool{n}d"), getattr(F, f"max_unpool{n}d"),
                              lambda make=make: make()[:2], kw, checks=(GRADCHECK,)))

# --- FractionalMaxPool: native's random windows -----------------------------------------------------------
FRACTIONAL = [(2, dict(kernel_size=2, output_size=4), (2, 3, 9, 8)),
              (2, dict(kernel_size=(3, 2), output_ratio=(0.6, 0.5)), (2, 2, 10, 9)),
              (2, dict(kernel_size=2, output_size=(3, 5)), (3, 8, 9)),  # unbatched
              (3, dict(kernel_size=2, output_size=3), (2, 2, 6, 7, 6)),
              (3, dict(kernel_size=(2, 3, 2), output_ratio=(0.5, 0.6, 0.7)), (2, 8, 9, 7))]
RANDOM = {"vmap": "random windows: vmap refuses randomness"}


def seeded(f):
    def g(*a, **k):
        torch.manual_seed(17)  # the samples native draws from the RNG: the same windows on both sides
        return f(*a, **k)
    g.__name__ = getattr(f, "__name__", type(f).__name__)
    return g


def samples(n, shape):
    return torch.rand(1 if len(shape) == n + 1 else shape[0], shape[-n - 1], n, dtype=DT)


for n, kw, shape in FRACTIONAL:
    cls = getattr(nn, f"FractionalMaxPool{n}d")
    twin = torchbp.swap(cls(**kw, return_indices=True))
    assert type(twin) is not cls and isinstance(twin, cls)
    name = f"pooling_extra.{cls.__name__}[{kw_id(kw)}]-{shape_id(shape)}"
    CASES += [
        Case(name, seeded(twin), seeded(cls(**kw, return_indices=True)),
             lambda shape=shape: (torch.randn(shape, dtype=DT, requires_grad=True),), checks=ALL, skip=RANDOM,
             low_dtypes=(torch.float32,), delta_ran=True, why="low precision: float32 (native's samples are drawn "
             "in the input's dtype: bfloat16 ones pick other windows than the float64 oracle's)"),
        Case(name + "-samples", getattr(tbp, f"fractional_max_pool{n}d"), getattr(F, f"fractional_max_pool{n}d"),
             lambda shape=shape: (torch.randn(shape, dtype=DT, requires_grad=True),),
             lambda n=n, kw=kw, shape=shape: dict(kw, _random_samples=samples(n, shape)), checks=SWEEP[FLOAT64],
             skip=RANDOM),
    ]
for n in (2, 3):
    CASES.append(Case(f"pooling_extra.fractional_max_pool{n}d-1x1x{'x'.join(['5'] * n)}",
                      getattr(tbp, f"fractional_max_pool{n}d"), getattr(F, f"fractional_max_pool{n}d"),
                      lambda n=n: (torch.randn(1, 1, *[5] * n, dtype=DT, requires_grad=True), 2),
                      lambda n=n: dict(output_size=3, _random_samples=torch.rand(1, 1, n, dtype=DT)),
                      checks=(GRADCHECK,), why="small: gradgradcheck costs O(numel²)"))

BAD = [
    Bad("pooling_extra.fractional_max_pool2d-2d", tbp.fractional_max_pool2d, F.fractional_max_pool2d,
        lambda: (torch.randn(4, 4), 2), "fractional_max_pool2d: expected 3-D", kwargs=dict(output_size=2)),
    Bad("pooling_extra.lp_pool2d-integer", tbp.lp_pool2d, None,
        lambda: (torch.ones(1, 1, 4, 4, dtype=torch.long), 2, 2), "lp_pool2d: input must be floating point",
        why="torch pools integers (truncated, no gradient); the δ formula needs a floating input"),
]
