"""Average pooling's δ keeps a NaN or ±inf δ inside its window, as native's does: δ_prev is non-finite exactly
where native's is (NaN where a NaN or both infinities reach, ±inf where one does) and equal elsewhere."""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional as tbf

from util import DEVICES

INF = float("inf")
# (native, twin, input shape, kwargs)
CASES = [
    (F.avg_pool1d, tbf.avg_pool1d, (2, 3, 12), dict(kernel_size=3, stride=2, padding=1)),
    (F.avg_pool2d, tbf.avg_pool2d, (2, 3, 9, 8), dict(kernel_size=3, stride=2)),
    (F.avg_pool2d, tbf.avg_pool2d, (2, 3, 8, 8), dict(kernel_size=2)),
    (F.avg_pool2d, tbf.avg_pool2d, (2, 3, 7, 7), dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    (F.avg_pool2d, tbf.avg_pool2d, (2, 3, 5, 5), dict(kernel_size=3, stride=3)),  # one window, not covering all
    (F.avg_pool3d, tbf.avg_pool3d, (1, 2, 6, 5, 6), dict(kernel_size=2, stride=2)),
    (F.adaptive_avg_pool2d, tbf.adaptive_avg_pool2d, (2, 3, 9, 7), dict(output_size=(4, 3))),
    (F.adaptive_avg_pool2d, tbf.adaptive_avg_pool2d, (2, 3, 6, 6), dict(output_size=1)),
]


def _grads(fn, x, kwargs, delta):
    x = x.clone().requires_grad_()
    fn(x, **kwargs).backward(delta)
    return x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "inf and -inf", "all"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}{list(c[2])}{c[3]}")
def test_non_finite_delta_stays_in_its_window(case, special, dtype, device):
    native, twin, shape, kwargs = case
    if native is F.avg_pool3d and dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("native avg_pool3d has no bfloat16 CPU kernel")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    out_shape = native(x, **kwargs).shape
    delta = torch.randn(out_shape, generator=g, dtype=torch.float64)
    flat = delta.view(-1)
    values = {"nan": [float("nan")], "inf": [INF], "-inf": [-INF], "inf and -inf": [INF, -INF],
              "all": [float("nan"), INF, -INF]}[special]
    for i, v in enumerate(values):  # neighbouring outputs: overlapping windows where the windows overlap
        flat[min(i, flat.numel() - 1)] = v
    if flat.numel() > 4:
        flat[-1] = values[0]
    delta = delta.to(device, dtype)
    want, got = _grads(native, x, kwargs, delta), _grads(twin, x, kwargs, delta)
    assert torch.equal(want.isnan(), got.isnan()), (want, got)
    assert torch.equal(want.isposinf(), got.isposinf()) and torch.equal(want.isneginf(), got.isneginf())
    finite = want.isfinite()
    assert torch.allclose(got[finite].double(), want[finite].double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                          atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert finite.any()  # the non-finite values stayed local


SMALL = [(F.avg_pool1d, tbf.avg_pool1d, (1, 2, 6), dict(kernel_size=3, stride=2, padding=1)),
         (F.avg_pool2d, tbf.avg_pool2d, (1, 1, 5, 4), dict(kernel_size=3, stride=2)),
         (F.avg_pool3d, tbf.avg_pool3d, (1, 1, 4, 3, 4), dict(kernel_size=2, stride=2))]


@pytest.mark.parametrize("known_finite", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("case", SMALL, ids=lambda c: c[0].__name__)
def test_both_paths_match_native_and_are_differentiable(case, known_finite, monkeypatch):
    """With finite δ, the path that skips the care (CPU, all finite) and the one that takes it (as on CUDA)
    both give native's δ, and both are in differentiable ops (gradcheck, gradgradcheck)."""
    from torchbp.functional import pooling
    monkeypatch.setattr(pooling, "_known_finite", lambda finite: known_finite)
    native, twin, shape, kwargs = case
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(native(x, **kwargs).shape, dtype=torch.float64)
    assert torch.allclose(_grads(twin, x.detach(), kwargs, delta), _grads(native, x.detach(), kwargs, delta),
                          rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: twin(x, **kwargs), (x,))
    assert torch.autograd.gradgradcheck(lambda x: twin(x, **kwargs), (x,))
