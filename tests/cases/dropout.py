"""torchbp.functional.dropout: dropout and channel dropout (1d / 2d / 3d) with native's mask (the RNG reset before
each call on both sides), nn.Dropout* twins, torch.dropout routed. The bit-for-bit mask, the RNG draws used up,
in place and p = 0 / eval returning the input itself: tests/test_dropout.py."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, seeded, shape_id

DT = torch.float64
RANDOM = {"vmap": "random masks: vmap refuses randomness (and each example would draw its own)"}



def x(*shape):
    return torch.randn(*shape, dtype=DT, requires_grad=True)


def transposed():
    return (torch.randn(65, 33, dtype=DT).t().requires_grad_(),)


CASES = []
for p in (0.1, 0.5, 0.9, 1.0):
    CASES += [Case(f"dropout.dropout[p={p}]-33x65", seeded(tbf.dropout), seeded(F.dropout), lambda: (x(33, 65),),
                   dict(p=p), checks=SWEEP[FLOAT64] + SWEEP[LOW], skip=RANDOM, delta_ran=True),
              Case(f"dropout.dropout[p={p}]-33x65-transposed", seeded(tbf.dropout), seeded(F.dropout), transposed,
                   dict(p=p), checks=SWEEP[FLOAT64] + SWEEP[LOW], skip=RANDOM, delta_ran=True)]
CASES += [
    Case("dropout.torch.dropout[p=0.3]-8x9", seeded(tbf.dropout), seeded(torch.dropout), lambda: (x(8, 9), 0.3, True),
         checks=SWEEP[FLOAT64], skip=RANDOM, delta_ran=True),
    Case("dropout.dropout[p=0.3]-4x5", seeded(tbf.dropout, 5), seeded(F.dropout, 5), lambda: (x(4, 5), 0.3),
         checks=(GRADCHECK,)),
]
twin = torchbp.swap(nn.Dropout(0.25))
assert type(twin) is not nn.Dropout and isinstance(twin, nn.Dropout)
CASES.append(Case("dropout.Dropout[p=0.25]-8x9", seeded(twin), seeded(nn.Dropout(0.25)), lambda: (x(8, 9),),
                  checks=SWEEP[FLOAT64] + SWEEP[LOW], skip=RANDOM, delta_ran=True))

FEATURE = [(tbf.dropout1d, F.dropout1d, nn.Dropout1d, [(3, 4, 5), (4, 5)]),
           (tbf.dropout2d, F.dropout2d, nn.Dropout2d, [(2, 3, 4, 5), (3, 4, 5)]),
           (tbf.dropout3d, F.dropout3d, nn.Dropout3d, [(2, 3, 2, 4, 5), (3, 2, 4, 5)])]
for ours, native, module, shapes in FEATURE:
    for p in (0.3, 1.0):
        for shape in shapes:
            CASES.append(Case(f"dropout.{ours.__name__}[p={p}]-{shape_id(shape)}", seeded(ours, 3), seeded(native, 3),
                              lambda shape=shape: (x(*shape),), dict(p=p), checks=SWEEP[FLOAT64] + SWEEP[LOW],
                              skip=RANDOM, delta_ran=True, quiet=True))  # dropout2d on 3-D: both warn alike
        twin = torchbp.swap(module(p))
        assert type(twin) is not module and isinstance(twin, module)
        CASES.append(Case(f"dropout.{module.__name__}[p={p}]-{shape_id(shapes[0])}", seeded(twin, 4),
                          seeded(module(p), 4), lambda shape=shapes[0]: (x(*shape),), checks=SWEEP[FLOAT64],
                          skip=RANDOM, delta_ran=True))
CASES.append(Case("dropout.dropout2d[p=0.4]-3x4x2x2", seeded(tbf.dropout2d, 5), seeded(F.dropout2d, 5),
                  lambda: (x(3, 4, 2, 2), 0.4), checks=(GRADCHECK,)))

BAD = [
    Bad("dropout.dropout-p", tbf.dropout, F.dropout, lambda: (torch.randn(4, 5), 1.5),
        "torchbp.functional.dropout: dropout probability has to be between 0 and 1"),
    Bad("dropout.dropout1d-4d", tbf.dropout1d, F.dropout1d, lambda: (torch.randn(2, 3, 4, 5),),
        "torchbp.functional.dropout1d: Expected 2D or 3D input"),
    Bad("dropout.dropout3d-p", tbf.dropout3d, F.dropout3d, lambda: (torch.randn(2, 3, 4, 5), 2.0),
        "torchbp.functional.dropout3d: dropout probability"),
    Bad("dropout.dropout-integer", tbf.dropout, F.dropout, lambda: (torch.ones(4, 5, dtype=torch.long), 0.5),
        "torchbp.functional.dropout: input must be floating point"),
]
