"""CTC loss (F.ctc_loss) against native beyond the common matrix (tests/cases/loss.py drives nn.CTCLoss's twin
over padded and concatenated targets, repeated labels, an empty target, every reduction, float32 and routing):
impossible alignments with zero_infinity, another blank, unbatched."""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional.loss as tbc
from util import assert_matches_native

DT = torch.float64
_GEN = torch.Generator().manual_seed(41)


def _lp(T, N, C):
    return torch.randn(T, N, C, dtype=DT, generator=_GEN).log_softmax(-1).detach().requires_grad_()


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
