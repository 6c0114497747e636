"""δ pooling (torchbp.functional.pooling: max, average, adaptive; 1-, 2- and 3-D) beyond the common matrix
(tests/cases/pooling.py drives float64, gradcheck, low precision, autocast, vmap and routing over the module
cases, and the refused inputs): ties, half-precision rounding, layouts, indices, functional forms, routes,
batched δ, a video net audited."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases.pooling import POOL3D_CASES, native_runs
from util import DEVICES, LOW, assert_matches_native, grad_fn_names


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), None],
                         ids=["2x2", "3x3-s2-p1", "global"])
def test_avg_pool_2d_delta_is_contiguous(kw):
    """δ_prev of a 2-D average pool comes out in the input's layout: a transposed δ made the δ ops before it
    (a ReLU's f' product before the global pool of a ResNet) several times slower."""
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    ours = (lambda t: tbf.avg_pool2d(t, **kw)) if kw else (lambda t: tbf.adaptive_avg_pool2d(t, 1))
    native = (lambda t: F.avg_pool2d(t, **kw)) if kw else (lambda t: F.adaptive_avg_pool2d(t, 1))
    out = ours(x)
    v = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, v)
    assert g.is_contiguous(), g.stride()
    torch.testing.assert_close(g, torch.autograd.grad(native(x), x, v)[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("create_graph", [False, True])
def test_global_avg_pool_half_rounds_once(dtype, create_graph):
    """The global pool's δ in half precision: δ / (H·W) in float32, rounded once, as native's kernel (bf16
    weights rounded per dim gave 3x native's error at 13×13), with no full-size float32 temporary."""
    x = torch.randn(4, 8, 13, 13, dtype=dtype, requires_grad=True)
    v = torch.randn(4, 8, 1, 1, dtype=dtype, requires_grad=create_graph)
    (g,) = torch.autograd.grad(tbf.adaptive_avg_pool2d(x, 1), x, v, create_graph=create_graph)
    (ref,) = torch.autograd.grad(F.adaptive_avg_pool2d(x, 1), x, v)
    assert g.dtype == dtype
    torch.testing.assert_close(g.detach(), ref, rtol=0, atol=0)


def test_max_pool_ties_follow_native():
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)  # every window is one big tie
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2,
                                                                                       ceil_mode=True)):
        assert_matches_native(tbf.max_pool2d, F.max_pool2d, (x,), kw)
        assert_matches_native(tbf.max_pool1d, F.max_pool1d, (x[0],), kw)
    y = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 3.0]]], dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.max_pool1d, F.max_pool1d, (y, 3, 1, 1))


def test_max_pool_many_channels_matches_native():
    """C >= 8 on CPU takes the channels-last forward: same output, indices and δ routing as native,
    ties and NaN included; unbatched, channels-last and vmapped inputs keep their own paths."""
    x = torch.randint(0, 3, (2, 9, 7, 8), dtype=torch.float64)  # small integers: many ties
    x[0, 0, 0, :3] = float("nan")
    x[1, 8, 2:5, 3] = float("nan")
    x.requires_grad_()
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
               dict(kernel_size=(3, 2), stride=1, dilation=(1, 2))):
        out, idx = tbf.max_pool2d(x, return_indices=True, **kw)
        ref, ridx = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(idx, ridx) and out.is_contiguous() and idx.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        g = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                                   rtol=0, atol=0)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.max_pool2d, F.max_pool2d, (x, 2))
    assert_matches_native(tbf.max_pool2d, F.max_pool2d, (x[0], 2))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert tbf.max_pool2d(xc, 2).stride() == F.max_pool2d(xc, 2).stride()
    assert_matches_native(tbf.max_pool2d, F.max_pool2d, (xc, 3, 2, 1))
    xs = torch.randn(3, 2, 16, 6, 6, dtype=torch.float64)  # vmapped: a 4-D batch per call
    per = [torch.func.vmap(torch.func.grad(lambda xi, fn=fn: fn(xi, 2).pow(2).sum()))(xs)
           for fn in (tbf.max_pool2d, F.max_pool2d)]
    assert torch.equal(*per)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", DEVICES)
def test_max_pool_half_disjoint_windows_route_delta_exactly(dtype, device):
    """Disjoint windows in half types: the δ values land bit for bit where native puts them, first order
    (scattered as int16 bits) and under create_graph (put_) alike; an expanded δ too."""
    x = torch.randn(3, 9, 8, 6, device=device).to(dtype).requires_grad_()
    out, ref = tbf.max_pool2d(x, 2), F.max_pool2d(x, 2)
    for g in (torch.randn_like(out), torch.randn((), device=device, dtype=dtype).expand_as(out)):
        want = torch.autograd.grad(ref, x, g, retain_graph=True)[0]
        assert torch.equal(torch.autograd.grad(out, x, g, retain_graph=True)[0], want)
        assert torch.equal(torch.autograd.grad(out, x, g, retain_graph=True, create_graph=True)[0], want)


def test_adaptive_max_pool_indices_and_routes():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    out, idx = tbf.adaptive_max_pool1d(x[0], 3, return_indices=True)
    assert torch.equal(idx, F.adaptive_max_pool1d(x[0], 3, return_indices=True)[1])
    with torchbp.manual_backward():
        for y in (F.adaptive_max_pool2d(x, 2), F.adaptive_max_pool2d(x, 2, return_indices=True)[0],
                  F.adaptive_max_pool1d(x[0], 2)):
            assert type(y.grad_fn).__name__ == "MaxPoolBackward"


@pytest.mark.parametrize("case", [c for c in POOL3D_CASES if not all(native_runs(*c, d) for d in LOW[:2])],
                         ids=lambda c: c[0].__name__ + str(c[2]))
def test_3d_pool_without_a_native_low_precision_kernel_raises_as_native(case):
    """The CPU's avg_pool3d has no bfloat16 kernel: ours raises as native does."""
    cls, kw, shape = case
    twin = torchbp.swap(cls(**kw))
    for dtype in LOW[:2]:
        if not native_runs(cls, kw, shape, dtype):
            with pytest.raises(NotImplementedError):
                twin(torch.randn(shape).to(dtype))


def test_functional_forms_indices_and_routes():
    x = torch.randn(2, 3, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.max_pool3d, F.max_pool3d, (x, 3, 2, 1), dict(return_indices=True))
    assert_matches_native(tbf.max_pool3d_with_indices, F.max_pool3d_with_indices, (x, 2))
    assert_matches_native(tbf.avg_pool3d, F.avg_pool3d, (x, 3, 2, 1, True, False, None))
    assert_matches_native(tbf.adaptive_max_pool3d, F.adaptive_max_pool3d, (x, (2, 3, 1)), dict(return_indices=True))
    # (each routed native against the δ its route names: the matrix's pooling.routed-* cases)
    for name in ("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
                 "max_pool3d_with_indices", "adaptive_max_pool3d_with_indices"):
        assert torchbp.registry.function_for(getattr(F, name)) is getattr(tbf, name), name
    with torchbp.manual_backward():
        y = F.adaptive_avg_pool3d(F.avg_pool3d(F.max_pool3d(x, 2, 1), 2, 1), 1)
        z = F.adaptive_max_pool3d(x, 2)
    assert grad_fn_names(y)[:3] == ["AvgPoolBackward", "AvgPoolBackward", "MaxPoolBackward"], grad_fn_names(y)
    assert grad_fn_names(z)[0] == "MaxPoolBackward"


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


def test_avg_pool_under_jacrev_with_a_nonfinite_delta():
    """Batched δ (jacrev) into the average pools, one δ row infinite: no data-dependent Python branch under
    the transform, and the infinite δ stays inside its windows, as native's."""
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    for ours, native in ((lambda t: tbf.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
                         (lambda t: tbf.adaptive_avg_pool2d(t, (2, 3)), lambda t: F.adaptive_avg_pool2d(t, (2, 3)))):
        torch.testing.assert_close(torch.func.jacrev(ours)(x), torch.func.jacrev(native)(x), rtol=1e-12, atol=0)
        out = native(x)
        v = torch.eye(out.numel(), dtype=torch.float64).view(-1, *out.shape)
        v[0].view(-1)[0] = float("inf")
        per = [torch.func.vmap(lambda g, f=f: torch.func.vjp(f, x)[1](g)[0])(v) for f in (ours, native)]
        torch.testing.assert_close(*per, rtol=1e-12, atol=0, equal_nan=True)
