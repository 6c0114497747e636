"""LPPool's NaN windows (values, gradients, gradchecks, twins and routes of LPPool / MaxUnpool /
FractionalMaxPool: tests/cases/pooling_extra.py)."""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional.pooling_extra as tbp

DT = torch.float64
_GEN = torch.Generator().manual_seed(13)


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_lp_pool_nan_windows_stay_in_their_windows(n):
    """A fractional p over negative inputs makes NaN windows; δ is NaN exactly where native's is (those windows'
    elements), not along whole rows of the separable window products."""
    x = _x(1, 2, *[6] * n)
    f = lambda m: (lambda t: m(t, 1.5, 2))  # noqa: E731
    res = []
    for fn in (getattr(tbp, f"lp_pool{n}d"), getattr(F, f"lp_pool{n}d")):
        t = x.detach().clone().requires_grad_()
        res.append(torch.autograd.grad(f(fn)(t).nansum(), t)[0])
    assert res[1].isnan().any() and torch.equal(res[0].isnan(), res[1].isnan())
    ok = ~res[1].isnan()
    assert torch.allclose(res[0][ok], res[1][ok], rtol=1e-10, atol=0)
