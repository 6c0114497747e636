"""CTC loss (F.ctc_loss, nn.CTCLoss) against native: padded and concatenated targets, repeated labels, empty
targets, impossible alignments with zero_infinity, every reduction, unbatched, float32, route."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.loss as tbc
from util import assert_matches_native, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(41)


def _lp(T, N, C):
    return torch.randn(T, N, C, dtype=DT, generator=_GEN).log_softmax(-1).detach().requires_grad_()


TARGETS = torch.tensor([[1, 2, 2, 3], [3, 1, 0, 0], [4, 4, 4, 0], [2, 0, 0, 0]])  # repeats, one empty below
CASES = [([8, 7, 8, 5], [4, 2, 3, 1]), ([8, 8, 6, 3], [4, 2, 3, 0])]


@pytest.mark.parametrize("lengths", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("concatenated", [False, True])
def test_ctc_matches_native(lengths, reduction, concatenated):
    il, tl = lengths
    x = _lp(8, 4, 5)
    tg = torch.cat([TARGETS[n, :L] for n, L in enumerate(tl)]) if concatenated else TARGETS
    native, twin = nn.CTCLoss(reduction=reduction), torchbp.swap(nn.CTCLoss(reduction=reduction))
    assert type(twin) is not nn.CTCLoss
    assert_matches_native(lambda a: twin(a, tg, il, tl), lambda a: native(a, tg, il, tl), (x,))
    assert_matches_native(lambda a: twin(a, tg, torch.tensor(il), torch.tensor(tl)),
                          lambda a: native(a, tg, torch.tensor(il), torch.tensor(tl)), (x,), dtype=torch.float32)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignment_blank_and_unbatched(zero_infinity):
    x = _lp(3, 2, 4)
    tg = torch.tensor([[1, 1, 2], [2, 3, 1]])  # sample 0 needs 4 steps (1, b, 1, 2) but has 3: p = 0
    if zero_infinity:
        assert_matches_native(lambda a: tbc.ctc_loss(a, tg, [3, 3], [3, 3], zero_infinity=True, reduction="sum"),
                              lambda a: F.ctc_loss(a, tg, [3, 3], [3, 3], zero_infinity=True, reduction="sum"), (x,))
    assert_matches_native(lambda a: tbc.ctc_loss(a, tg, [3, 3], [2, 3], blank=3, zero_infinity=zero_infinity),
                          lambda a: F.ctc_loss(a, tg, [3, 3], [2, 3], blank=3, zero_infinity=zero_infinity), (x,))
    y = _lp(6, 1, 4)[:, 0].detach().requires_grad_()
    assert_matches_native(lambda a: tbc.ctc_loss(a, torch.tensor([1, 2]), [6], [2], reduction="none"),
                          lambda a: F.ctc_loss(a, torch.tensor([1, 2]), [6], [2], reduction="none"), (y,))


def test_route():
    x = _lp(5, 2, 4)
    with torchbp.manual_backward():
        y = F.ctc_loss(x, torch.tensor([[1, 2], [3, 0]]), [5, 4], [2, 1])
    assert grad_fn_names(y)[0] == "CTCBackward"
