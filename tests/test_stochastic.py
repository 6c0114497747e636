"""AlphaDropout / FeatureAlphaDropout and RReLU: the random draws are random, as many as native's (what comes
after sees the same RNG state), and in place on a non-leaf (values, gradients, twins, gradchecks, routes and
refusals: tests/cases/stochastic.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.stochastic as tbs

DT = torch.float64
_GEN = torch.Generator().manual_seed(5)


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


def _seeded(f, seed=11):
    def g(*a, **k):
        torch.manual_seed(seed)
        return f(*a, **k)
    return g


@pytest.mark.parametrize("cls,kw", [(nn.AlphaDropout, dict(p=0.3)), (nn.FeatureAlphaDropout, dict(p=0.4)),
                                    (nn.RReLU, dict()), (nn.RReLU, dict(lower=0.05, upper=0.6))])
def test_another_seed_draws_another_output(cls, kw):
    twin = torchbp.swap(cls(**kw).train())
    x = _x(4, 5, 3)
    assert not torch.equal(_seeded(twin, 1)(x), _seeded(twin, 2)(x))


def test_rng_stream_and_inplace():
    x = _x(5, 4)
    # the same number of draws as native: what comes after sees the same RNG state
    for ours, native in ((tbs.alpha_dropout, F.alpha_dropout), (tbs.rrelu, F.rrelu)):
        torch.manual_seed(3)
        ours(x, 0.5, True) if ours is tbs.alpha_dropout else ours(x, 0.1, 0.3, True)
        a = torch.rand(3)
        torch.manual_seed(3)
        native(x, 0.5, True) if native is F.alpha_dropout else native(x, 0.1, 0.3, True)
        assert torch.equal(a, torch.rand(3))
    for train in (True, False):  # in place on a non-leaf: the same values and gradients
        res = []
        for f in (F.rrelu, tbs.rrelu):
            xx = x.detach().clone().requires_grad_()
            y = xx * 1.0
            torch.manual_seed(4)
            out = f(y, 0.1, 0.3, train, True)
            assert out is y
            res.append((out.detach().clone(), torch.autograd.grad(out.sum(), xx)[0]))
        for a, b in zip(*res):
            assert torch.equal(a, b)
