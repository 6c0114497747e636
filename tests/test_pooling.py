"""3-D pooling (video models) against native autograd: max, average (with every window option), adaptive
average and adaptive max, as twins and routed functions; gradcheck/gradgradcheck; low precision."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import LOW, assert_matches_native, gradchecks, grad_fn_names

CASES = [
    (nn.MaxPool3d, dict(kernel_size=2), (2, 3, 4, 6, 6)),
    (nn.MaxPool3d, dict(kernel_size=3, stride=2, padding=1), (2, 2, 5, 7, 6)),
    (nn.MaxPool3d, dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (2, 3, 3, 7, 8)),  # r3d stem
    (nn.MaxPool3d, dict(kernel_size=(3, 2, 2), stride=(2, 1, 2), dilation=(1, 2, 1), ceil_mode=True),
     (2, 2, 7, 6, 5)),
    (nn.MaxPool3d, dict(kernel_size=2, stride=2), (3, 4, 6, 4)),  # unbatched
    (nn.AvgPool3d, dict(kernel_size=2), (2, 3, 4, 6, 6)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1), (2, 2, 5, 7, 6)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 7, 6)),
    (nn.AvgPool3d, dict(kernel_size=(2, 3, 2), stride=2, padding=1, ceil_mode=True), (2, 2, 6, 7, 5)),
    (nn.AvgPool3d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 7, 6, 8)),
    (nn.AvgPool3d, dict(kernel_size=2, stride=2, divisor_override=3), (2, 2, 4, 4, 6)),
    (nn.AvgPool3d, dict(kernel_size=(3, 4, 2)), (2, 2, 3, 4, 2)),  # one window
    (nn.AdaptiveAvgPool3d, dict(output_size=1), (2, 3, 4, 5, 6)),  # global: r3d_18's head
    (nn.AdaptiveAvgPool3d, dict(output_size=(2, 3, 4)), (2, 3, 5, 7, 9)),
    (nn.AdaptiveAvgPool3d, dict(output_size=(None, 2, 1)), (3, 4, 5, 6)),
    (nn.AdaptiveAvgPool3d, dict(output_size=5), (1, 2, 3, 4, 3)),  # upsampling windows overlap
    (nn.AdaptiveMaxPool3d, dict(output_size=(2, 3, 4)), (2, 3, 5, 7, 9)),
    (nn.AdaptiveMaxPool3d, dict(output_size=(2, 2, 2)), (2, 4, 4, 6)),  # disjoint: plain scatter
    (nn.AdaptiveMaxPool3d, dict(output_size=4), (1, 2, 3, 5, 3)),  # overlapping: scatter_add
]


def _ids(case):
    cls, kw, shape = case
    return f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_module_float64_and_low_precision(case):
    cls, kw, shape = case
    native, twin = cls(**kw), torchbp.swap(cls(**kw))
    assert type(twin) is not cls and isinstance(twin, cls)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert_matches_native(twin, native, (x,))
    for dtype in LOW[:2]:
        try:
            native(x.detach().to(dtype))
        except NotImplementedError:  # the CPU's avg_pool3d has no bfloat16 kernel: ours raises as native does
            with pytest.raises(NotImplementedError):
                twin(x.detach().to(dtype))
            continue
        assert_matches_native(twin, native, (x,), dtype=dtype)


GRADCHECK = [
    (tbf.max_pool3d, dict(kernel_size=2, stride=1, padding=1), (1, 2, 3, 3, 3)),  # overlapping windows
    (tbf.max_pool3d, dict(kernel_size=2), (1, 2, 2, 4, 2)),
    (tbf.avg_pool3d, dict(kernel_size=2, stride=1, padding=1, count_include_pad=False), (1, 2, 3, 3, 2)),
    (tbf.avg_pool3d, dict(kernel_size=3, ceil_mode=True, stride=2), (1, 1, 4, 3, 3)),
    (tbf.adaptive_avg_pool3d, dict(output_size=(2, 1, 3)), (1, 2, 3, 3, 4)),
    (tbf.adaptive_avg_pool3d, dict(output_size=1), (1, 2, 3, 3, 2)),
    (tbf.adaptive_max_pool3d, dict(output_size=(2, 2, 3)), (1, 2, 3, 3, 4)),
]


@pytest.mark.parametrize("fn,kw,shape", GRADCHECK, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(GRADCHECK)])
def test_gradcheck_and_gradgradcheck(fn, kw, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    gradchecks(lambda t: fn(t, **kw), (x,))


def test_functional_forms_indices_and_routes():
    x = torch.randn(2, 3, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.max_pool3d, F.max_pool3d, (x, 3, 2, 1), dict(return_indices=True))
    assert_matches_native(tbf.max_pool3d_with_indices, F.max_pool3d_with_indices, (x, 2))
    assert_matches_native(tbf.avg_pool3d, F.avg_pool3d, (x, 3, 2, 1, True, False, None))
    assert_matches_native(tbf.adaptive_max_pool3d, F.adaptive_max_pool3d, (x, (2, 3, 1)), dict(return_indices=True))
    from torchbp.functional.pooling import ROUTES
    for native, args in ((torch.max_pool3d, (x, 3, 2)), (torch._C._nn.max_pool3d_with_indices, (x, 2)),
                         (torch._C._nn.adaptive_avg_pool3d, (x, (2, 2, 2))),
                         (torch._C._nn.adaptive_max_pool3d, (x, (2, 2, 2)))):
        assert_matches_native(ROUTES[native], native, args)
    for name in ("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
                 "max_pool3d_with_indices", "adaptive_max_pool3d_with_indices"):
        assert torchbp.registry.function_for(getattr(F, name)) is getattr(tbf, name), name
    with torchbp.manual_backward():
        y = F.adaptive_avg_pool3d(F.avg_pool3d(F.max_pool3d(x, 2, 1), 2, 1), 1)
        z = F.adaptive_max_pool3d(x, 2)
    assert grad_fn_names(y)[:3] == ["AvgPoolBackward", "AvgPoolBackward", "MaxPoolBackward"], grad_fn_names(y)
    assert grad_fn_names(z)[0] == "MaxPoolBackward"


def test_errors_name_the_op():
    with pytest.raises(RuntimeError, match=r"max_pool3d: expected 4-D \(unbatched\) or 5-D"):
        tbf.max_pool3d(torch.randn(5, 5, 5), 2)
    with pytest.raises(RuntimeError, match=r"adaptive_avg_pool3d: output_size must be an int or a tuple of 3"):
        tbf.adaptive_avg_pool3d(torch.randn(1, 5, 5, 5), (1, 2))
    with pytest.raises(RuntimeError, match=r"avg_pool3d: kernel_size must be an int or a tuple of 3"):
        tbf.avg_pool3d(torch.randn(1, 5, 5, 5), (2, 2))


def _video_net():
    """r3d_18's layout in miniature: a (1, 3, 3)-stride stem, max pool, a residual 3-D block, global pool."""
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv3d(c, c, 3, padding=1, bias=False), nn.BatchNorm3d(c)
            self.conv2, self.bn2 = nn.Conv3d(c, c, 3, padding=1, bias=False), nn.BatchNorm3d(c)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False),
                         nn.BatchNorm3d(4), nn.ReLU(inplace=True),
                         nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), Block(4),
                         nn.AvgPool3d(2, ceil_mode=True), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5)).double()


def test_video_net_trains_like_native_and_audits_with_full_coverage():
    native, twin = _video_net(), torchbp.swap(_video_net())
    x = torch.randn(2, 3, 4, 16, 16, dtype=torch.float64)
    res = []
    for m in (native, twin):
        out = m(x)
        res.append([out, *torch.autograd.grad((out * out.detach().cos()).sum(), list(m.parameters()))])
    for s, n in zip(res[1], res[0]):
        assert s.shape == n.shape and float((s - n).norm() / n.norm()) <= 1e-10
    r = torchbp.audit(_video_net(), x)
    assert r.ok and r.coverage == 1.0, str(r)
