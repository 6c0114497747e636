"""torchbp.functional.loss (margin): multi_margin, multilabel_margin and triplet_margin_with_distance losses (and
their nn twins) for every reduction, weights, p, swap and custom distances; the hinges' kinks; nn.NLLLoss2d."""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.loss as tbm
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, kw_id

DT = torch.float64
REDUCTIONS = ["mean", "sum", "none"]
CPU_NO_HALF = (torch.float32,)  # the multi-margin CPU kernels have no bfloat16 / float16
ZERO_D = {"vmap": "a 0-d input: no dim to map"}


def twin_of(cls, **kw):
    twin = torchbp.swap(cls(**kw))
    assert type(twin) is not cls and isinstance(twin, cls)
    return twin


def x(*shape):
    return torch.randn(*shape, dtype=DT, requires_grad=True)


CASES = []
# --- multi_margin ------------------------------------------------------------------------------------------
for reduction in REDUCTIONS:
    for p, margin, weighted in [(1, 1.0, False), (2, 0.7, False), (1, 1.5, True), (2, 1.0, True)]:
        w = torch.rand(5, dtype=DT) + 0.5 if weighted else None
        kw = dict(p=p, margin=margin, weight=w, reduction=reduction)
        name = f"margin.MultiMarginLoss[p={p},margin={margin},weighted={weighted},reduction={reduction}]"
        twin, native = twin_of(nn.MultiMarginLoss, **kw), nn.MultiMarginLoss(**kw)
        CASES += [
            Case(f"{name}-6x5", twin, native, lambda: (x(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])),
                 checks=SWEEP[FLOAT64], vmap_dims=(0, 0), delta_ran=True),
            Case(f"{name}-5", twin, native, lambda: (x(5), torch.tensor(4)), checks=(FLOAT64,), delta_ran=True),
            Case(f"{name}-6x5", lambda h, y, *ww, p=p, m=margin, r=reduction: tbm.multi_margin_loss(h, y, p, m, *ww, reduction=r),
                 lambda h, y, *ww, p=p, m=margin, r=reduction: F.multi_margin_loss(h, y, p, m, *ww, reduction=r),
                 lambda w=w: (x(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])) + (() if w is None else (w.clone(),)),
                 checks=SWEEP[LOW], low_dtypes=CPU_NO_HALF),
        ]

# --- multilabel_margin: full rows, none, duplicates --------------------------------------------------------
LABELS = [[3, 0, -1, 1, 2], [1, 2, 3, 4, 0], [-1, 2, 1, 0, 0], [2, 2, -1, 0, 0]]
for reduction in REDUCTIONS:
    twin, native = twin_of(nn.MultiLabelMarginLoss, reduction=reduction), nn.MultiLabelMarginLoss(reduction=reduction)
    name = f"margin.MultiLabelMarginLoss[reduction={reduction}]"
    CASES += [
        Case(f"{name}-4x5", twin, native, lambda: (x(4, 5), torch.tensor(LABELS)),
             checks=SWEEP[FLOAT64] + SWEEP[LOW], low_dtypes=CPU_NO_HALF, vmap_dims=(0, 0), delta_ran=True),
        Case(f"{name}-5", twin, native, lambda: (x(5), torch.tensor(LABELS[0])), checks=(FLOAT64,), delta_ran=True),
    ]

# --- the hinges' kinks (u = margin − h_y + h_i exactly 0: native's δ there is 0), gradchecks ------------------
def at_the_kink():
    return torch.tensor([[0.5, -0.5, 0.25], [1.0, 0.0, 2.0]], dtype=DT, requires_grad=True), torch.tensor([0, 2])


CASES += [
    Case("margin.multi_margin_loss-kink", tbm.multi_margin_loss, F.multi_margin_loss, at_the_kink,
         checks=SWEEP[FLOAT64], vmap_dims=(0, 0)),
    Case("margin.multilabel_margin_loss-kink", tbm.multilabel_margin_loss, F.multilabel_margin_loss,
         lambda: (at_the_kink()[0], torch.tensor([[0, -1, 0], [2, -1, 0]])), checks=SWEEP[FLOAT64], vmap_dims=(0, 0)),
    Case("margin.multi_margin_loss[p=2]-2x3", tbm.multi_margin_loss, F.multi_margin_loss,
         lambda: (x(2, 3), torch.tensor([1, 0])), dict(p=2), checks=(GRADCHECK,)),
    Case("margin.multi_margin_loss-2x3", tbm.multi_margin_loss, F.multi_margin_loss,
         lambda: (x(2, 3), torch.tensor([1, 0])), checks=(GRADCHECK,)),
    Case("margin.multilabel_margin_loss-2x3", tbm.multilabel_margin_loss, F.multilabel_margin_loss,
         lambda: (x(2, 3), torch.tensor([[1, -1, 0], [0, 2, -1]])), checks=(GRADCHECK,)),
]

# --- one score: torch computes both losses (a single class, so no margin term); so do the δ twins ------------
for reduction in REDUCTIONS:
    CASES.append(Case(f"margin.multi_margin_loss[reduction={reduction}]-0d", tbm.multi_margin_loss,
                      F.multi_margin_loss, lambda: (torch.tensor(0.7, dtype=DT, requires_grad=True), torch.tensor(0)),
                      dict(reduction=reduction), checks=SWEEP[FLOAT64], skip=ZERO_D))
    for t in (0, -1):
        CASES.append(Case(f"margin.multilabel_margin_loss[reduction={reduction}]-0d-target{t}",
                          tbm.multilabel_margin_loss, F.multilabel_margin_loss,
                          lambda t=t: (torch.tensor(0.7, dtype=DT, requires_grad=True), torch.tensor(t)),
                          dict(reduction=reduction), checks=SWEEP[FLOAT64], skip=ZERO_D))


# --- triplet_margin_with_distance --------------------------------------------------------------------------
def cosine_distance(a, b):
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


for reduction in REDUCTIONS:
    for swap in (False, True):
        for distance in (None, cosine_distance, nn.PairwiseDistance(p=1.0)):
            kw = dict(distance_function=distance, margin=1.5, swap=swap, reduction=reduction)
            CASES.append(Case(f"margin.TripletMarginWithDistanceLoss[{kw_id(kw)}]-5x4",
                              twin_of(nn.TripletMarginWithDistanceLoss, **kw), nn.TripletMarginWithDistanceLoss(**kw),
                              lambda: (x(5, 4), x(5, 4), x(5, 4)), checks=SWEEP[FLOAT64] + SWEEP[LOW],
                              vmap_dims=(0, 0, 0), delta_ran=True))


def squared(a, b):
    return ((a - b) ** 2).sum(-1)  # exact on small integers


def swap_ties():
    return (torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=DT, requires_grad=True),
            torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=DT, requires_grad=True),
            torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=DT, requires_grad=True))  # d(a, n) = d(p, n): the swap ties


CASES += [
    Case("margin.triplet_margin_with_distance_loss[squared,swap]-ties", tbm.triplet_margin_with_distance_loss,
         F.triplet_margin_with_distance_loss, swap_ties, dict(distance_function=squared, swap=True),
         checks=SWEEP[FLOAT64], vmap_dims=(0, 0, 0)),
    Case("margin.triplet_margin_with_distance_loss[swap]-2x3", tbm.triplet_margin_with_distance_loss,
         F.triplet_margin_with_distance_loss, lambda: (x(2, 3), x(2, 3), x(2, 3)), dict(swap=True),
         checks=(GRADCHECK,)),
]


# --- nn.NLLLoss2d (the deprecated name of NLLLoss over images) ---------------------------------------------
def log_probs_and_labels():
    return x(2, 4, 3, 3).log_softmax(1).detach().requires_grad_(), torch.randint(0, 4, (2, 3, 3))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # NLLLoss2d is deprecated; its twin is still swapped in
    nll2d = twin_of(nn.NLLLoss2d, ignore_index=1), nn.NLLLoss2d(ignore_index=1)
CASES.append(Case("margin.NLLLoss2d[ignore_index=1]-2x4x3x3", *nll2d, log_probs_and_labels, checks=SWEEP[FLOAT64], delta_ran=True,
                  skip={"vmap": "an example's (C, H, W) scores read as a batch of H-long rows (N = C)"}))

BAD = [
    Bad("margin.multi_margin_loss-p3", tbm.multi_margin_loss, F.multi_margin_loss,
        lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2])), "multi_margin_loss: only p == 1 and p == 2 supported",
        kwargs=dict(p=3)),
    Bad("margin.triplet_margin_with_distance_loss-margin0", tbm.triplet_margin_with_distance_loss,
        F.triplet_margin_with_distance_loss, lambda: (torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)),
        "triplet_margin_with_distance_loss: margin must be greater than 0", kwargs=dict(margin=0)),
]
