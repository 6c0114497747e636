"""multi_margin, multilabel_margin and triplet_margin_with_distance losses (and their nn twins) against native:
float64 for every reduction, weights, p, swap, custom distances; gradchecks; low precision; routes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.loss as tbm
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(9)
REDUCTIONS = ["mean", "sum", "none"]


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p,margin,weighted", [(1, 1.0, False), (2, 0.7, False), (1, 1.5, True), (2, 1.0, True)])
def test_multi_margin(reduction, p, margin, weighted):
    h, y = _x(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    w = torch.rand(5, dtype=DT, generator=_GEN) + 0.5 if weighted else None
    kw = dict(p=p, margin=margin, weight=w, reduction=reduction)
    native, twin = nn.MultiMarginLoss(**kw), torchbp.swap(nn.MultiMarginLoss(**kw))
    assert type(twin) is not nn.MultiMarginLoss
    assert_matches_native(twin, native, (h, y))
    assert_matches_native(twin, native, (h[0].detach().requires_grad_(), y[0]))  # unbatched
    for dtype in (torch.float32,):  # the CPU kernels have no bfloat16
        assert_matches_native(lambda a, b, *ww: tbm.multi_margin_loss(a, b, p, margin, *ww, reduction=reduction),
                              lambda a, b, *ww: F.multi_margin_loss(a, b, p, margin, *ww, reduction=reduction),
                              (h, y) if w is None else (h, y, w), dtype=dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multilabel_margin(reduction):
    h = _x(4, 5)
    y = torch.tensor([[3, 0, -1, 1, 2], [1, 2, 3, 4, 0], [-1, 2, 1, 0, 0], [2, 2, -1, 0, 0]])  # full, none, dup
    native, twin = nn.MultiLabelMarginLoss(reduction=reduction), torchbp.swap(nn.MultiLabelMarginLoss(reduction=reduction))
    assert_matches_native(twin, native, (h, y))
    assert_matches_native(twin, native, (h[0].detach().requires_grad_(), y[0]))
    for dtype in (torch.float32,):  # the CPU kernels have no bfloat16
        assert_matches_native(twin, native, (h, y), dtype=dtype)


def _ties_at_margin():
    """h with some u = margin − h_y + h_i exactly 0 (the hinge's kink: native's δ there is 0)."""
    h = torch.tensor([[0.5, -0.5, 0.25], [1.0, 0.0, 2.0]], dtype=DT, requires_grad=True)
    return h, torch.tensor([0, 2])


def test_class_losses_at_the_kink_and_gradchecks():
    h, y = _ties_at_margin()
    assert_matches_native(tbm.multi_margin_loss, F.multi_margin_loss, (h, y))
    assert_matches_native(tbm.multilabel_margin_loss, F.multilabel_margin_loss,
                          (h, torch.tensor([[0, -1, 0], [2, -1, 0]])))
    gradchecks(lambda a: tbm.multi_margin_loss(a, torch.tensor([1, 0]), p=2), (_x(2, 3),))
    gradchecks(lambda a: tbm.multi_margin_loss(a, torch.tensor([1, 0])), (_x(2, 3),))
    gradchecks(lambda a: tbm.multilabel_margin_loss(a, torch.tensor([[1, -1, 0], [0, 2, -1]])), (_x(2, 3),))


def _cosine_distance(a, b):
    return 1.0 - F.cosine_similarity(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("distance", [None, _cosine_distance, nn.PairwiseDistance(p=1.0)])
def test_triplet_margin_with_distance(reduction, swap, distance):
    a, p, n = _x(5, 4), _x(5, 4), _x(5, 4)
    kw = dict(distance_function=distance, margin=1.5, swap=swap, reduction=reduction)
    native = nn.TripletMarginWithDistanceLoss(**kw)
    twin = torchbp.swap(nn.TripletMarginWithDistanceLoss(**kw))
    assert type(twin) is not nn.TripletMarginWithDistanceLoss
    assert_matches_native(twin, native, (a, p, n))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(twin, native, (a, p, n), dtype=dtype)


def test_triplet_with_distance_ties_gradchecks_and_routes():
    a, p, n = _x(3, 4), _x(3, 4), _x(3, 4)
    sq = lambda x, y: ((x - y) ** 2).sum(-1)  # noqa: E731 (exact on small integers)
    ta = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=DT, requires_grad=True)
    tp = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=DT, requires_grad=True)
    tn = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=DT, requires_grad=True)  # d(a, n) = d(p, n): the swap ties
    assert_matches_native(lambda *t: tbm.triplet_margin_with_distance_loss(*t, distance_function=sq, swap=True),
                          lambda *t: F.triplet_margin_with_distance_loss(*t, distance_function=sq, swap=True),
                          (ta, tp, tn))
    gradchecks(lambda *t: tbm.triplet_margin_with_distance_loss(*t, swap=True), (_x(2, 3), _x(2, 3), _x(2, 3)))
    with torchbp.manual_backward():
        ys = [F.multi_margin_loss(a, torch.tensor([0, 1, 2])), F.multilabel_margin_loss(a, torch.zeros(3, 4).long()),
              F.triplet_margin_with_distance_loss(a, p, n)]
    for y, name in zip(ys, ["MultiMarginBackward", "MultilabelMarginBackward", "TripletHingeBackward"]):
        assert grad_fn_names(y)[0] == name
    assert "PairwiseDistanceBackward" in grad_fn_names(ys[2])
    with pytest.raises(RuntimeError, match="multi_margin_loss: only p == 1 and p == 2 supported"):
        tbm.multi_margin_loss(a, torch.tensor([0, 1, 2]), p=3)
    with pytest.raises(ValueError, match="margin must be greater than 0"):
        tbm.triplet_margin_with_distance_loss(a, p, n, margin=0)


def test_nll_loss2d_twin():
    h = _x(2, 4, 3, 3).log_softmax(1).detach().requires_grad_()
    y = torch.randint(0, 4, (2, 3, 3), generator=_GEN)
    native, twin = nn.NLLLoss2d(ignore_index=1), torchbp.swap(nn.NLLLoss2d(ignore_index=1))
    assert type(twin) is not nn.NLLLoss2d and isinstance(twin, nn.NLLLoss2d)
    assert_matches_native(twin, native, (h, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_losses_on_a_0d_input(reduction):
    """One score: torch computes both losses (a single class, so no margin term); so do the δ twins."""
    h = torch.tensor(0.7, dtype=DT, requires_grad=True)
    assert_matches_native(lambda a: tbm.multi_margin_loss(a, torch.tensor(0), reduction=reduction),
                          lambda a: F.multi_margin_loss(a, torch.tensor(0), reduction=reduction), (h,))
    for t in (torch.tensor(0), torch.tensor(-1)):
        assert_matches_native(lambda a: tbm.multilabel_margin_loss(a, t, reduction=reduction),
                              lambda a: F.multilabel_margin_loss(a, t, reduction=reduction), (h,))
