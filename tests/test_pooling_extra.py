"""LPPool1d/2d/3d and MaxUnpool1d/2d/3d against native: float64, every norm (±∞ included), ceil_mode,
gradcheck/gradgradcheck, low precision, twins, routes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.pooling_extra as tbp
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(13)


def _x(*shape, positive=False):
    x = torch.randn(*shape, dtype=DT, generator=_GEN)
    return (x.abs() + 0.1 if positive else x).requires_grad_()


LP = [(1, dict(norm_type=2, kernel_size=3), (2, 3, 9)), (1, dict(norm_type=3.0, kernel_size=2, stride=1), (3, 7)),
      (2, dict(norm_type=2, kernel_size=2), (2, 3, 6, 6)),
      (2, dict(norm_type=1.5, kernel_size=(3, 2), stride=2, ceil_mode=True), (2, 2, 7, 6)),
      (2, dict(norm_type=float("inf"), kernel_size=2, stride=1), (2, 2, 4, 5)),
      (2, dict(norm_type=-float("inf"), kernel_size=2), (2, 2, 4, 4)),
      (3, dict(norm_type=2, kernel_size=2), (2, 2, 4, 4, 4)), (3, dict(norm_type=4, kernel_size=(1, 2, 2)), (2, 3, 4, 4))]


@pytest.mark.parametrize("n,kw,shape", LP, ids=[f"{n}d-{kw}" for n, kw, _ in LP])
def test_lp_pool(n, kw, shape):
    cls = getattr(nn, f"LPPool{n}d")
    native, twin = cls(**kw), torchbp.swap(cls(**kw))
    assert type(twin) is not cls and isinstance(twin, cls)
    x = _x(*shape, positive=kw["norm_type"] not in (2, 4))  # odd/fractional powers of negatives are NaN
    assert_matches_native(twin, native, (x,))
    assert_matches_native(twin, native, (x,), dtype=torch.float32)


def test_lp_pool_zero_window_and_gradchecks():
    x = _x(1, 2, 4, 4)
    with torch.no_grad():
        x[0, 0, :2, :2] = 0  # a window of zeros: A = 0, δ 0 there (torch's relu of |A|)
    assert_matches_native(lambda t: tbp.lp_pool2d(t, 2, 2), lambda t: F.lp_pool2d(t, 2, 2), (x,))
    gradchecks(lambda t: tbp.lp_pool2d(t, 2, 2, 1), (_x(1, 2, 3, 3),))
    gradchecks(lambda t: tbp.lp_pool1d(t, 3, 2), (_x(2, 4, positive=True),))
    gradchecks(lambda t: tbp.lp_pool2d(t, float("inf"), 2), (_x(1, 1, 4, 4),))


UNPOOL = [(1, dict(kernel_size=2), (2, 3, 8)), (1, dict(kernel_size=3, stride=2, padding=1), (3, 9)),
          (2, dict(kernel_size=2), (2, 3, 6, 6)), (2, dict(kernel_size=3, stride=2, padding=1), (2, 2, 7, 7)),
          (3, dict(kernel_size=2), (2, 2, 4, 4, 6)), (3, dict(kernel_size=2, stride=2), (2, 4, 4, 4))]


@pytest.mark.parametrize("n,kw,shape", UNPOOL, ids=[f"{n}d-{kw}" for n, kw, _ in UNPOOL])
@pytest.mark.parametrize("explicit_size", [False, True])
def test_max_unpool(n, kw, shape, explicit_size):
    x = _x(*shape)
    pooled, idx = getattr(F, f"max_pool{n}d")(x.detach(), return_indices=True, **kw)
    cls = getattr(nn, f"MaxUnpool{n}d")
    native, twin = cls(**kw), torchbp.swap(cls(**kw))
    assert type(twin) is not cls
    size = list(x.shape[-n:]) if explicit_size else None
    y = pooled.clone().requires_grad_()
    assert_matches_native(lambda t: twin(t, idx, size), lambda t: native(t, idx, size), (y,))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(lambda t: twin(t, idx, size), lambda t: native(t, idx, size), (y,), dtype=dtype)
    if explicit_size and n < 3 and kw.get("stride", kw["kernel_size"]) == kw["kernel_size"]:  # distinct indices (overlapping windows may pick
        gradchecks(lambda t: getattr(tbp, f"max_unpool{n}d")(t, idx, **kw), (y,))  # one twice: not a derivative)


def test_routes():
    x = _x(1, 2, 4, 4)
    p, idx = F.max_pool2d(x.detach(), 2, return_indices=True)
    p.requires_grad_()
    with torchbp.manual_backward():
        a, b = F.lp_pool2d(x, 2, 2), F.max_unpool2d(p, idx, 2)
    assert grad_fn_names(a)[0] == "LPPoolBackward" and grad_fn_names(b)[0] == "MaxUnpoolBackward"


FRACTIONAL = [(2, dict(kernel_size=2, output_size=4), (2, 3, 9, 8)),
              (2, dict(kernel_size=(3, 2), output_ratio=(0.6, 0.5)), (2, 2, 10, 9)),
              (2, dict(kernel_size=2, output_size=(3, 5)), (3, 8, 9)),  # unbatched
              (3, dict(kernel_size=2, output_size=3), (2, 2, 6, 7, 6)),
              (3, dict(kernel_size=(2, 3, 2), output_ratio=(0.5, 0.6, 0.7)), (2, 8, 9, 7))]


@pytest.mark.parametrize("n,kw,shape", FRACTIONAL, ids=[f"{n}d-{kw}" for n, kw, _ in FRACTIONAL])
def test_fractional_max_pool_same_samples_as_native(n, kw, shape):
    cls = getattr(nn, f"FractionalMaxPool{n}d")
    native, twin = cls(**kw, return_indices=True), torchbp.swap(cls(**kw, return_indices=True))
    assert type(twin) is not cls
    x = _x(*shape)

    def seeded(m):
        def f(t):
            torch.manual_seed(17)  # the samples native draws from the RNG: the same windows on both sides
            return m(t)
        return f
    assert_matches_native(seeded(twin), seeded(native), (x,))
    assert_matches_native(seeded(twin), seeded(native), (x,), dtype=torch.float32)
    samples = torch.rand(1 if x.dim() == n + 1 else x.shape[0], x.shape[-n - 1], n, dtype=DT)
    fn = getattr(tbp, f"fractional_max_pool{n}d")
    assert_matches_native(lambda t: fn(t, _random_samples=samples, **kw),
                          lambda t: getattr(F, f"fractional_max_pool{n}d")(t, _random_samples=samples, **kw), (x,))
    small = _x(1, 1, *[5] * n)  # gradgradcheck costs O(numel²)
    s1 = torch.rand(1, 1, n, dtype=DT)
    gradchecks(lambda t: fn(t, 2, output_size=3, _random_samples=s1), (small,))
    with torchbp.manual_backward():
        y = getattr(F, f"fractional_max_pool{n}d")(x, _random_samples=samples, **kw)
    assert grad_fn_names(y)[0] == "FractionalMaxPoolBackward"


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
