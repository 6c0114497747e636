"""AlphaDropout / FeatureAlphaDropout (the same mask as native) and RReLU (train: native's random slopes; eval:
the fixed slope) against native: float64, gradcheck/gradgradcheck, low precision, twins, routes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.stochastic as tbs
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(5)


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


def _seeded(f, seed=11):
    """f with the RNG reset before each call: both sides draw the same random numbers."""
    def g(*a, **k):
        torch.manual_seed(seed)
        return f(*a, **k)
    return g


CASES = [(nn.AlphaDropout, dict(p=0.3), (4, 6)), (nn.AlphaDropout, dict(p=0.7), (2, 3, 5)),
         (nn.FeatureAlphaDropout, dict(p=0.4), (4, 5, 3, 3)), (nn.FeatureAlphaDropout, dict(p=0.5), (3, 6)),
         (nn.RReLU, dict(), (4, 7)), (nn.RReLU, dict(lower=0.2, upper=0.2), (3, 5)),
         (nn.RReLU, dict(lower=0.05, upper=0.6), (2, 3, 4))]


@pytest.mark.parametrize("cls,kw,shape", CASES, ids=[f"{c.__name__}-{kw}" for c, kw, _ in CASES])
@pytest.mark.parametrize("train", [True, False])
def test_module_matches_native(cls, kw, shape, train):
    native, twin = cls(**kw).train(train), torchbp.swap(cls(**kw).train(train))
    assert type(twin) is not cls and isinstance(twin, cls)
    x = _x(*shape)
    assert_matches_native(_seeded(twin), _seeded(native), (x,))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(_seeded(twin), _seeded(native), (x,), dtype=dtype)
    if train and kw.get("lower") != kw.get("upper", -1):  # random draws: another seed gives another output
        assert not torch.equal(_seeded(twin, 1)(x), _seeded(twin, 2)(x))


def test_functional_p_edges_inplace_and_rng_stream():
    x = _x(5, 4)
    for p in (0.0, 1.0):
        assert_matches_native(_seeded(tbs.alpha_dropout), _seeded(F.alpha_dropout), (x, p, True))
        assert_matches_native(_seeded(tbs.feature_alpha_dropout), _seeded(F.feature_alpha_dropout), (x, p, True))
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


def test_rrelu_at_zero_takes_the_slope():
    x = _x(3, 4)
    with torch.no_grad():
        x[0] = 0  # the kink: native's δ there is the slope's (a > 0 is false)
    for train in (True, False):
        assert_matches_native(_seeded(lambda t: tbs.rrelu(t, 0.1, 0.3, train)),
                              _seeded(lambda t: F.rrelu(t, 0.1, 0.3, train)), (x,))


def test_gradchecks_and_routes():
    gradchecks(_seeded(lambda t: tbs.alpha_dropout(t, 0.4, True)), (_x(3, 4),))
    gradchecks(_seeded(lambda t: tbs.feature_alpha_dropout(t, 0.4, True)), (_x(3, 4, 2),))
    gradchecks(_seeded(lambda t: tbs.rrelu(t, 0.1, 0.3, True)), (_x(3, 4),))
    gradchecks(lambda t: tbs.rrelu(t, 0.1, 0.3, False), (_x(3, 4),))
    x = _x(3, 4, 2)
    with torchbp.manual_backward():
        ys = [F.alpha_dropout(x, 0.5, True), F.feature_alpha_dropout(x, 0.5, True), F.rrelu(x, training=True),
              torch.rrelu(x, 0.1, 0.2, True)]
    for y, name in zip(ys, ["AlphaDropoutBackward"] * 2 + ["RReLUBackward"] * 2):
        assert grad_fn_names(y)[0] == name


def test_errors_name_the_op():
    with pytest.raises(ValueError, match="alpha_dropout: dropout probability has to be between 0 and 1"):
        tbs.alpha_dropout(torch.randn(3), 1.5, True)
    with pytest.raises(RuntimeError, match="feature_alpha_dropout: Feature dropout requires at least 2 dim"):
        tbs.feature_alpha_dropout(torch.randn(3), 0.5, True)
    with pytest.raises(RuntimeError, match=r"rrelu: lower \(0.5\) must not exceed upper"):
        tbs.rrelu(torch.randn(3), 0.5, 0.1, True)
