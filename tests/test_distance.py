"""normalize, cosine_similarity, pairwise_distance (and nn.CosineSimilarity / PairwiseDistance) against native:
float64, every p, broadcasting, zero vectors, gradcheck/gradgradcheck, low precision, twins and routes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.distance as tbd
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64


_GEN = torch.Generator().manual_seed(7)  # not the cost's seed: <v, normalize(x)> with v = x has gradient 0


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 1.5, 0.5, float("inf"), 0.0])
@pytest.mark.parametrize("dim", [1, -1, 0])
def test_normalize(p, dim):
    x = _x(4, 5, 3)
    assert_matches_native(tbd.normalize, F.normalize, (x,), dict(p=p, dim=dim))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(tbd.normalize, F.normalize, (x,), dict(p=p, dim=dim), dtype=dtype)


def test_normalize_small_norms_and_gradchecks():
    x = _x(3, 4)
    with torch.no_grad():
        x[0] = 0
        x[1] *= 1e-3  # below eps: divided by eps, the norm's gradient cut (clamp's)
    assert_matches_native(tbd.normalize, F.normalize, (x,), dict(eps=1e-2))
    for p in (2.0, 1.0, 3.0, float("inf")):
        gradchecks(lambda t: tbd.normalize(t, p, 1), (_x(2, 3),))


@pytest.mark.parametrize("shapes,dim", [(((4, 5), (4, 5)), 1), (((3, 4, 5), (3, 4, 5)), -1),
                                        (((3, 1, 5), (1, 4, 5)), 2), (((4, 5), (5,)), -1), (((6,), (6,)), 0)])
def test_cosine_similarity(shapes, dim):
    x1, x2 = _x(*shapes[0]), _x(*shapes[1])
    assert_matches_native(tbd.cosine_similarity, F.cosine_similarity, (x1, x2), dict(dim=dim))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(tbd.cosine_similarity, F.cosine_similarity, (x1, x2), dict(dim=dim), dtype=dtype)


def test_cosine_similarity_zero_and_small_vectors_gradchecks():
    x1, x2 = _x(3, 4), _x(3, 4)
    with torch.no_grad():
        x1[0] = 0
        x2[1] *= 1e-9  # below eps
    assert_matches_native(tbd.cosine_similarity, F.cosine_similarity, (x1, x2))
    gradchecks(tbd.cosine_similarity, (_x(2, 3), _x(1, 3)))


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 1.5, 0.5, float("inf"), 0.0])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance(p, keepdim):
    for s1, s2 in (((4, 5), (4, 5)), ((4, 5), (5,)), ((2, 3, 5), (3, 5)), ((5,), (5,))):
        x1, x2 = _x(*s1), _x(*s2)
        assert_matches_native(tbd.pairwise_distance, F.pairwise_distance, (x1, x2), dict(p=p, keepdim=keepdim))
    x1, x2 = _x(4, 5), _x(4, 5)
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(tbd.pairwise_distance, F.pairwise_distance, (x1, x2), dict(p=p), dtype=dtype)


def test_pairwise_distance_zero_distance_and_gradchecks():
    x1 = _x(3, 4)
    x2 = (x1.detach() + 1e-6).requires_grad_()  # x1 − x2 + eps = 0 exactly: the norm's kink
    assert_matches_native(tbd.pairwise_distance, F.pairwise_distance, (x1, x2))
    for p in (2.0, 1.0, 3.0):
        gradchecks(lambda a, b: tbd.pairwise_distance(a, b, p), (_x(2, 3), _x(2, 3)))


def test_twins_routes_and_errors():
    for cls, kw in ((nn.CosineSimilarity, dict(dim=0)), (nn.PairwiseDistance, dict(p=1.0, keepdim=True))):
        native, twin = cls(**kw), torchbp.swap(cls(**kw))
        assert type(twin) is not cls and isinstance(twin, cls)
        assert_matches_native(twin, native, (_x(4, 5), _x(4, 5)))
    x1, x2 = _x(4, 5), _x(4, 5)
    with torchbp.manual_backward():
        ys = [F.normalize(x1), F.cosine_similarity(x1, x2), F.pairwise_distance(x1, x2),
              torch.cosine_similarity(x1, x2), torch.pairwise_distance(x1, x2)]
    for y, name in zip(ys, ["NormalizeBackward", "CosineSimilarityBackward", "PairwiseDistanceBackward",
                            "CosineSimilarityBackward", "PairwiseDistanceBackward"]):
        assert grad_fn_names(y)[0] == name, grad_fn_names(y)
    with pytest.raises(RuntimeError, match="normalize: out= is not differentiable"):
        tbd.normalize(x1, out=torch.empty(4, 5))
    with pytest.raises(RuntimeError, match="cosine_similarity: dim=3 is out of range"):
        tbd.cosine_similarity(x1, x2, dim=3)
