"""torchbp.functional.stochastic: AlphaDropout / FeatureAlphaDropout (native's mask) and RReLU (train: native's
random slopes; eval: the fixed slope), train and eval. Both sides draw the same random numbers: the RNG is
reset before each call."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.stochastic as tbs
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, kw_id, seeded, shape_id

DT = torch.float64
RANDOM = {"vmap": "random draws: vmap refuses randomness (and each example would draw its own)"}
NO_VMAP_RULE = {"vmap": "native's rrelu_with_noise has no vmap rule"}


def x(*shape):
    return torch.randn(*shape, dtype=DT, requires_grad=True)


MODULES = [(nn.AlphaDropout, dict(p=0.3), (4, 6)), (nn.AlphaDropout, dict(p=0.7), (2, 3, 5)),
           (nn.FeatureAlphaDropout, dict(p=0.4), (4, 5, 3, 3)), (nn.FeatureAlphaDropout, dict(p=0.5), (3, 6)),
           (nn.RReLU, dict(), (4, 7)), (nn.RReLU, dict(lower=0.2, upper=0.2), (3, 5)),
           (nn.RReLU, dict(lower=0.05, upper=0.6), (2, 3, 4))]

CASES = []
for cls, kw, shape in MODULES:
    for train in (True, False):
        twin, native = torchbp.swap(cls(**kw).train(train)), cls(**kw).train(train)
        assert type(twin) is not cls and isinstance(twin, cls)
        identity = cls is not nn.RReLU and not train  # dropout in eval: the input itself, no δ Function
        skip = dict(RANDOM) if train else dict(NO_VMAP_RULE) if cls is nn.RReLU else {}
        if identity:
            skip["route"] = "eval-mode dropout returns its input: nothing to route"
        CASES.append(Case(f"stochastic.{cls.__name__}[{kw_id(kw)}]-{'train' if train else 'eval'}-{shape_id(shape)}",
                          seeded(twin), seeded(native), lambda shape=shape: (x(*shape),), checks=SWEEP[FLOAT64] + SWEEP[LOW],
                          skip=skip, low_dtypes=(torch.float32, torch.bfloat16), delta_ran=not identity,
                          why="float16: not checked (bfloat16 covers the half-precision casts)"))

# p at its edges (all kept, all dropped), RReLU's kink (native's δ at 0 is the slope's: a > 0 is false)
for p in (0.0, 1.0):
    for ours, native in ((tbs.alpha_dropout, F.alpha_dropout), (tbs.feature_alpha_dropout, F.feature_alpha_dropout)):
        CASES.append(Case(f"stochastic.{ours.__name__}[p={p}]-5x4", seeded(ours), seeded(native),
                          lambda p=p: (x(5, 4), p, True), checks=SWEEP[FLOAT64],
                          skip=dict(RANDOM, route="p = 0 returns the input: nothing to route") if p == 0 else RANDOM))


def kink():
    h = torch.randn(3, 4, dtype=DT)
    h[0] = 0
    return h.requires_grad_(), 0.1, 0.3


for train in (True, False):
    CASES.append(Case(f"stochastic.rrelu[{'train' if train else 'eval'}]-kink", seeded(tbs.rrelu), seeded(F.rrelu),
                      lambda train=train: kink() + (train,), checks=SWEEP[FLOAT64], skip=RANDOM if train else NO_VMAP_RULE))
CASES += [
    Case("stochastic.torch.rrelu[train]-3x4x2", seeded(tbs.rrelu), seeded(torch.rrelu), lambda: (x(3, 4, 2), 0.1, 0.2, True),
         checks=SWEEP[FLOAT64], skip=RANDOM),
    Case("stochastic.alpha_dropout[p=0.4]-3x4", seeded(tbs.alpha_dropout), seeded(F.alpha_dropout),
         lambda: (x(3, 4), 0.4, True), checks=(GRADCHECK,)),
    Case("stochastic.feature_alpha_dropout[p=0.4]-3x4x2", seeded(tbs.feature_alpha_dropout),
         seeded(F.feature_alpha_dropout), lambda: (x(3, 4, 2), 0.4, True), checks=(GRADCHECK,)),
    Case("stochastic.rrelu[train]-3x4", seeded(tbs.rrelu), seeded(F.rrelu), lambda: (x(3, 4), 0.1, 0.3, True),
         checks=(GRADCHECK,)),
    Case("stochastic.rrelu[eval]-3x4", tbs.rrelu, F.rrelu, lambda: (x(3, 4), 0.1, 0.3, False), checks=(GRADCHECK,)),
]

BAD = [
    Bad("stochastic.alpha_dropout-p", tbs.alpha_dropout, F.alpha_dropout, lambda: (torch.randn(3), 1.5, True),
        "alpha_dropout: dropout probability has to be between 0 and 1"),
    Bad("stochastic.feature_alpha_dropout-1d", tbs.feature_alpha_dropout, F.feature_alpha_dropout,
        lambda: (torch.randn(3), 0.5, True), "feature_alpha_dropout: Feature dropout requires at least 2 dim"),
    Bad("stochastic.rrelu-lower-above-upper", tbs.rrelu, F.rrelu, lambda: (torch.randn(3), 0.5, 0.1, True),
        r"rrelu: lower \(0.5\) must not exceed upper"),
]
