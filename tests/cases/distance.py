"""torchbp.functional.distance: normalize, cosine_similarity, pairwise_distance (and nn.CosineSimilarity /
PairwiseDistance, routed torch.cosine_similarity / pairwise_distance): every p, broadcasting, zero vectors."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.distance as tbd
from cases import FLOAT64, GRADCHECK, SWEEP, Bad, Case, kw_id, shape_id, sweep

DT = torch.float64
P = [2.0, 1.0, 3.0, 1.5, 0.5, float("inf"), 0.0]


def xs(*shapes, dtype=DT):
    """Fresh normal inputs, not from the cost's seed (<v, normalize(x)> with v = x has gradient 0)."""
    g = torch.Generator().manual_seed(7)
    return tuple(torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in shapes)


def small_norms():
    (x,) = xs((3, 4))
    with torch.no_grad():
        x[0] = 0
        x[1] *= 1e-3  # below eps=1e-2: divided by eps, the norm's gradient cut (clamp's)
    return (x,)


def zero_and_small_vectors():
    x1, x2 = xs((3, 4), (3, 4))
    with torch.no_grad():
        x1[0] = 0
        x2[1] *= 1e-9  # below eps
    return x1, x2


def zero_distance():
    (x1,) = xs((3, 4))
    return x1, (x1.detach() + 1e-6).requires_grad_()  # x1 − x2 + eps = 0 exactly: the norm's kink


CASES = []
for p in P:
    for dim in (1, -1, 0):
        CASES += sweep("distance", f"normalize[p={p},dim={dim}]", tbd.normalize, F.normalize, dict(p=p, dim=dim),
                       float64=[("4x5x3", lambda: xs((4, 5, 3)))], low=[("4x5x3", lambda: xs((4, 5, 3)))])
CASES.append(Case("distance.normalize[eps=0.01]-small-norms", tbd.normalize, F.normalize, small_norms,
                  dict(dim=-1, eps=1e-2), checks=SWEEP[FLOAT64]))
for p in (2.0, 1.0, 3.0, float("inf")):
    CASES.append(Case(f"distance.normalize[p={p},dim=1]-2x3", tbd.normalize, F.normalize, lambda: xs((2, 3)),
                      dict(p=p, dim=1), checks=(GRADCHECK,)))

COSINE = [(((4, 5), (4, 5)), 1), (((3, 4, 5), (3, 4, 5)), -1), (((3, 1, 5), (1, 4, 5)), 2), (((4, 5), (5,)), -1),
          (((6,), (6,)), 0)]
for shapes, dim in COSINE:
    tag = "-".join(map(shape_id, shapes))
    CASES += sweep("distance", f"cosine_similarity[dim={dim}]", tbd.cosine_similarity, F.cosine_similarity,
                   dict(dim=dim), float64=[(tag, lambda shapes=shapes: xs(*shapes))],
                   low=[(tag, lambda shapes=shapes: xs(*shapes))],
                   **({"skip": {"vmap": "1-D inputs: vmap leaves 0-d vectors, with no dim 0 to reduce"}}
                      if len(shapes[0]) == 1 else {}))
CASES += [
    Case("distance.cosine_similarity-zero-and-small-vectors", tbd.cosine_similarity, F.cosine_similarity,
         zero_and_small_vectors, checks=SWEEP[FLOAT64]),
    Case("distance.cosine_similarity-2x3-1x3", tbd.cosine_similarity, F.cosine_similarity, lambda: xs((2, 3), (1, 3)),
         checks=(GRADCHECK,)),
    Case("distance.torch.cosine_similarity-4x5", tbd.cosine_similarity, torch.cosine_similarity,
         lambda: xs((4, 5), (4, 5)), checks=SWEEP[FLOAT64]),
]

PAIRWISE = [((4, 5), (4, 5)), ((4, 5), (5,)), ((2, 3, 5), (3, 5)), ((5,), (5,))]
for p in P:
    for keepdim in (False, True):
        kw = dict(p=p, keepdim=keepdim)
        CASES += sweep("distance", f"pairwise_distance[{kw_id(kw)}]", tbd.pairwise_distance, F.pairwise_distance, kw,
                       float64=[("-".join(map(shape_id, s)), lambda s=s: xs(*s)) for s in PAIRWISE],
                       low=[("4x5-4x5", lambda: xs((4, 5), (4, 5)))] if not keepdim else [])
CASES += [
    Case("distance.pairwise_distance-zero-distance", tbd.pairwise_distance, F.pairwise_distance, zero_distance,
         checks=SWEEP[FLOAT64]),
    Case("distance.torch.pairwise_distance-4x5", tbd.pairwise_distance, torch.pairwise_distance,
         lambda: xs((4, 5), (4, 5)), checks=SWEEP[FLOAT64]),
]
for p in (2.0, 1.0, 3.0):
    CASES.append(Case(f"distance.pairwise_distance[p={p}]-2x3", tbd.pairwise_distance, F.pairwise_distance,
                      lambda: xs((2, 3), (2, 3)), dict(p=p), checks=(GRADCHECK,)))

# the twins: nn.CosineSimilarity / PairwiseDistance swapped (a δ Function must run: delta_ran)
for cls, kw in ((nn.CosineSimilarity, dict(dim=0)), (nn.PairwiseDistance, dict(p=1.0, keepdim=True))):
    twin = torchbp.swap(cls(**kw))
    assert type(twin) is not cls and isinstance(twin, cls)
    CASES.append(Case(f"distance.{cls.__name__}[{kw_id(kw)}]-4x5", twin, cls(**kw), lambda: xs((4, 5), (4, 5)),
                      checks=(FLOAT64,), delta_ran=True))

BAD = [
    Bad("distance.normalize-out", tbd.normalize, F.normalize, lambda: (xs((4, 5))[0],),
        "normalize: out= is not differentiable", kwargs=lambda: dict(out=torch.empty(4, 5, dtype=DT))),
    Bad("distance.cosine_similarity-dim-out-of-range", tbd.cosine_similarity, F.cosine_similarity,
        lambda: xs((4, 5), (4, 5)), "cosine_similarity: dim=3 is out of range", kwargs=dict(dim=3)),
]
