"""δ convolution and pooling against native autograd: module cases in the style of PyTorch's module test
lists (float64 exact-ish), gradcheck/gradgradcheck, low precision vs a float64 oracle, twins, errors."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import DEVICES, LOW, assert_matches_native, gradchecks

# (native module class, constructor kwargs, input shape)
CONV_CASES = [
    (nn.Conv1d, dict(in_channels=4, out_channels=5, kernel_size=3), (2, 4, 10)),
    (nn.Conv1d, dict(in_channels=4, out_channels=5, kernel_size=3, padding=1, bias=False), (2, 4, 10)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1), (2, 4, 11)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, groups=2), (2, 4, 12)),
    (nn.Conv1d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=3), (2, 4, 13)),
    (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (3, 7)),  # unbatched
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 7, 6)),
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=(3, 2), padding=(1, 2), bias=False), (2, 3, 7, 6)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (2, 3, 9, 8)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3), padding=1), (2, 3, 11, 10)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=(2, 1), padding=2), (2, 4, 9, 8)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1), (2, 4, 6, 6)),
    (nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, stride=2, bias=False), (2, 4, 9, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"), (2, 3, 6, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=(2, 4), padding="same", dilation=(1, 3)),
     (2, 3, 6, 9)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (2, 3, 6, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=2, dilation=2), (3, 9, 10)),
] + [
    (cls, dict(in_channels=3, out_channels=4, kernel_size=3, padding=p, padding_mode=mode), shape)
    for mode in ("zeros", "reflect", "replicate", "circular")
    for cls, p, shape in ((nn.Conv1d, 2, (2, 3, 8)), (nn.Conv2d, (1, 2), (2, 3, 6, 7)))
]

# transposed: stride > 1 with output_padding, output_padding ≥ stride (allowed below the dilation: δ_a's
# convolution then overshoots a and is cut), dilation, groups, bias=False, unbatched
CONVT_CASES = [
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=5, kernel_size=3), (2, 4, 10)),
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1, output_padding=1),
     (2, 4, 9)),
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=3, output_padding=2, groups=2,
                              bias=False), (2, 4, 7)),
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), (3, 7)),  # unbatched
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 5, 4)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1,
                              groups=2), (2, 4, 5, 6)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0),
                              output_padding=(1, 2), bias=False), (2, 3, 4, 5)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, dilation=(2, 1), stride=2,
                              output_padding=1), (2, 4, 5, 5)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), (3, 6, 6)),
]

POOL_CASES = [
    (nn.MaxPool1d, dict(kernel_size=3), (2, 3, 10)),
    (nn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 10)),
    (nn.MaxPool1d, dict(kernel_size=2, stride=1, dilation=2), (3, 9)),
    (nn.MaxPool2d, dict(kernel_size=2), (2, 3, 8, 8)),
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 7)),
    (nn.MaxPool2d, dict(kernel_size=(3, 2), stride=(2, 1), ceil_mode=True), (2, 3, 10, 7)),
    (nn.MaxPool2d, dict(kernel_size=3, stride=1, dilation=2, padding=1), (3, 8, 8)),
    (nn.AvgPool1d, dict(kernel_size=3), (2, 3, 10)),
    (nn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 10)),
    (nn.AvgPool1d, dict(kernel_size=4, stride=3, padding=2, count_include_pad=False, ceil_mode=True), (3, 11)),
    (nn.AvgPool2d, dict(kernel_size=2), (2, 3, 8, 8)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 7)),
    (nn.AvgPool2d, dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True), (2, 3, 10, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (3, 10, 9)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, divisor_override=4), (2, 3, 9, 9)),
    (nn.AdaptiveAvgPool1d, dict(output_size=4), (2, 3, 10)),
    (nn.AdaptiveAvgPool1d, dict(output_size=7), (3, 5)),  # upsampling windows overlap
    (nn.AdaptiveAvgPool2d, dict(output_size=1), (2, 3, 7, 6)),  # global pooling: δ times one (H, W) map
    (nn.AdaptiveAvgPool1d, dict(output_size=1), (3, 5)),
    (nn.AvgPool2d, dict(kernel_size=(4, 3), padding=1, count_include_pad=False), (2, 3, 3, 2)),  # one window
    (nn.AdaptiveAvgPool2d, dict(output_size=(1, None)), (2, 3, 4, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(3, 4)), (2, 3, 7, 10)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(None, 2)), (3, 7, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=5), (2, 3, 3, 4)),
    (nn.AdaptiveMaxPool1d, dict(output_size=4), (2, 3, 10)),
    (nn.AdaptiveMaxPool1d, dict(output_size=3), (3, 9)),  # disjoint windows: plain scatter
    (nn.AdaptiveMaxPool2d, dict(output_size=(3, 4)), (2, 3, 7, 10)),
    (nn.AdaptiveMaxPool2d, dict(output_size=(None, 2)), (3, 7, 5)),
    (nn.AdaptiveMaxPool2d, dict(output_size=5), (2, 3, 3, 4)),  # windows overlap: scatter_add
]

CASES = CONV_CASES + CONVT_CASES + POOL_CASES


def _ids(case):
    cls, kw, shape = case
    return f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{'x'.join(map(str, shape))}"


def _pair(cls, kw, dtype=torch.float64):
    torch.manual_seed(0)
    native = cls(**kw).to(dtype)
    twin = torchbp.swap(cls(**kw).to(dtype))
    twin.load_state_dict(native.state_dict())
    return native, twin


def _module_fn(module):
    """module(x) as a function of (x, *parameters), so the helpers see and compare the parameters' grads."""
    names = [n for n, _ in module.named_parameters()]
    return (lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps)), (x,))), \
        list(module.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_module_float64(case, device):
    cls, kw, shape = case
    native, twin = _pair(cls, kw)
    assert type(twin) is not cls and isinstance(twin, cls)
    native.to(device), twin.to(device)
    fs, ps = _module_fn(twin)
    fn, pn = _module_fn(native)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert_matches_native(fs, fn, (x, *ps), device=device)


GRADCHECK = [  # small: gradgradcheck costs O(numel²)
    (nn.Conv1d, dict(in_channels=2, out_channels=2, kernel_size=2, padding="same", dilation=3), (1, 2, 6)),
    (nn.Conv1d, dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, padding_mode="reflect"), (1, 2, 5)),
    (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=2, stride=2, dilation=(1, 2), padding=1), (1, 2, 5, 4)),
    (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=2, groups=2, padding=(1, 0),
                     padding_mode="circular", bias=False), (1, 2, 3, 4)),
    (nn.ConvTranspose1d, dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1,
                              groups=2), (1, 2, 4)),
    (nn.ConvTranspose2d, dict(in_channels=2, out_channels=2, kernel_size=2, dilation=(3, 1), stride=(1, 2),
                              output_padding=(2, 1)), (1, 2, 3, 3)),
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (1, 2, 5, 4)),
    (nn.MaxPool2d, dict(kernel_size=2, ceil_mode=True), (1, 2, 5, 4)),  # disjoint windows: plain scatter
    (nn.MaxPool1d, dict(kernel_size=2, stride=3, dilation=2), (2, 7)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (1, 2, 5, 4)),
    (nn.AvgPool1d, dict(kernel_size=2, padding=1), (2, 5)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(2, 3)), (1, 2, 5, 4)),
    (nn.AdaptiveAvgPool2d, dict(output_size=1), (1, 2, 3, 4)),
]


@pytest.mark.parametrize("case", GRADCHECK, ids=[_ids(c) for c in GRADCHECK])
def test_module_gradcheck(case):
    cls, kw, shape = case
    _, twin = _pair(cls, kw)
    fs, ps = _module_fn(twin)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if cls in (nn.MaxPool1d, nn.MaxPool2d):  # distinct, well-separated values: no ties within a finite step
        x = (torch.randperm(x.numel(), dtype=torch.float64).view(shape) / 10).requires_grad_()
    gradchecks(fs, (x, *ps))


@pytest.fixture
def wgrad_per_sample(monkeypatch):
    """∂J/∂W's and ∂J/∂b's batch sums in one chunk per sample (the CPU path large inputs take)."""
    from torchbp.functional import conv
    monkeypatch.setattr(conv, "_CHUNK_ELEMS", 1)


@pytest.mark.parametrize("case", CONV_CASES + CONVT_CASES, ids=[_ids(c) for c in CONV_CASES + CONVT_CASES])
def test_conv_weight_grad_in_batch_chunks(case, wgrad_per_sample):
    native, twin = _pair(*case[:2])
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    assert_matches_native(fs, fn, (torch.randn(case[2], dtype=torch.float64, requires_grad=True), *ps))


@pytest.mark.parametrize("case", GRADCHECK[:6], ids=[_ids(c) for c in GRADCHECK[:6]])
def test_conv_weight_grad_in_batch_chunks_gradcheck(case, wgrad_per_sample):
    _, twin = _pair(*case[:2])
    fs, ps = _module_fn(twin)
    shape = (2,) + case[2][1:]  # two samples: two chunks
    gradchecks(fs, (torch.randn(shape, dtype=torch.float64, requires_grad=True), *ps))


@pytest.mark.parametrize("dtype", LOW)
def test_conv_weight_grad_in_batch_chunks_low_precision(dtype, wgrad_per_sample):
    native, twin = _pair(*CONV_CASES[11][:2])
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    x = torch.randn((6,) + CONV_CASES[11][2][1:], requires_grad=True)
    assert_matches_native(fs, fn, (x, *[p.detach().float().requires_grad_() for p in ps]), dtype=dtype)


# float32 on CPU with >= 16 channels per group: ∂J/∂W with δ channels-last, in chunks of 16 samples (40:
# a short last chunk), with groups, stride, dilation, padding.
CL_CASES = [
    (nn.Conv2d, dict(in_channels=16, out_channels=8, kernel_size=3), (40, 16, 9, 9)),
    (nn.Conv2d, dict(in_channels=32, out_channels=6, kernel_size=(3, 2), groups=2, stride=(2, 1), dilation=(1, 2),
                     padding=(1, 2)), (40, 32, 11, 10)),
]


@pytest.mark.parametrize("case", CL_CASES, ids=[_ids(c) for c in CL_CASES])
def test_conv_weight_grad_channels_last_float32(case):
    native, twin = _pair(*case[:2])
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    x = torch.randn(case[2], requires_grad=True)
    assert_matches_native(fs, fn, (x, *[p.detach().float().requires_grad_() for p in ps]), dtype=torch.float32)


LOW_CASES = [CONV_CASES[2], CONV_CASES[11], CONV_CASES[13], CONV_CASES[-3], POOL_CASES[4], POOL_CASES[12],
             POOL_CASES[-3], CONVT_CASES[1], CONVT_CASES[5], CONVT_CASES[7]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", LOW_CASES, ids=[_ids(c) for c in LOW_CASES])
def test_module_low_precision(case, dtype, device):
    cls, kw, shape = case
    native, twin = _pair(cls, kw)
    fs, ps = _module_fn(twin.to(device))
    fn, pn = _module_fn(native.to(device))
    x = torch.randn(shape, requires_grad=True)
    assert_matches_native(fs, fn, (x, *[p.detach().float().requires_grad_() for p in ps]), dtype=dtype,
                          device=device)


def test_functional_forms_and_routes():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.conv2d, F.conv2d, (x, W, None, 2, "valid", 1, 2))
    assert_matches_native(tbf.conv1d, F.conv1d, (x[:, :, 0], W[..., 0], None), dict(padding="same", groups=2))
    assert_matches_native(tbf.max_pool2d, F.max_pool2d, (x, 3, 2, 1), dict(return_indices=True))
    assert_matches_native(tbf.max_pool2d_with_indices, F.max_pool2d_with_indices, (x, 2))
    assert_matches_native(tbf.max_pool1d_with_indices, F.max_pool1d_with_indices, (x[:, 0], 3, 1))
    assert_matches_native(tbf.avg_pool2d, F.avg_pool2d, (x, 3, 2, 1, True, False, None))
    from torchbp.functional.pooling import ROUTES
    for native in (torch.max_pool1d, torch.max_pool2d, torch.max_pool1d_with_indices, torch.avg_pool1d):
        assert_matches_native(ROUTES[native], native, (x[:, 0] if "1d" in native.__name__ else x, 3, 2))
    for name in ("conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
                 "adaptive_avg_pool1d", "adaptive_avg_pool2d"):
        assert torchbp.registry.function_for(getattr(F, name)) is getattr(tbf, name), name


def test_manual_backward_routes_to_delta_functions():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    W = torch.randn(4, 3, 3, 3, requires_grad=True)
    with torchbp.manual_backward():
        y = F.adaptive_avg_pool2d(F.avg_pool2d(F.max_pool2d(F.conv2d(x, W, padding=1), 2), 2, 1), 1)
    names = []
    fn = y.grad_fn
    while fn is not None:
        names.append(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert names[:4] == ["AvgPoolBackward", "AvgPoolBackward", "MaxPoolBackward", "ConvBackward"], names


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


CONV3D_CASES = [
    (nn.Conv3d, dict(in_channels=3, out_channels=4, kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=1,
                     dilation=(1, 1, 2)), (2, 3, 5, 6, 7)),
    (nn.Conv3d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=2,
                     padding_mode="reflect", bias=False), (4, 5, 5, 6)),  # unbatched
    (nn.ConvTranspose3d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                              output_padding=1, groups=2), (2, 4, 3, 4, 3)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONV3D_CASES, ids=[_ids(c) for c in CONV3D_CASES])
def test_conv3d_float64_gradcheck_low_precision(case, device):
    cls, kw, shape = case
    native, twin = _pair(cls, kw)
    native.to(device), twin.to(device)
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert_matches_native(fs, fn, (x, *ps), device=device)
    for dtype in LOW:
        assert_matches_native(fs, fn, (x.detach().float().requires_grad_(), *[p.float() for p in ps]),
                              dtype=dtype, device=device)
    if device == "cpu":
        small = cls(**{**kw, "in_channels": 2, "out_channels": 2, "groups": 1}).double()
        f, p = _module_fn(torchbp.swap(small))
        gradchecks(f, (torch.randn(1, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True), *p))


def test_adaptive_max_pool_gradcheck_indices_low_precision_and_routes():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    gradchecks(lambda x: tbf.adaptive_max_pool2d(x, (3, 2)), (x,))
    out, idx = tbf.adaptive_max_pool1d(x[0], 3, return_indices=True)
    assert torch.equal(idx, F.adaptive_max_pool1d(x[0], 3, return_indices=True)[1])
    for dtype in LOW:
        assert_matches_native(tbf.adaptive_max_pool2d, F.adaptive_max_pool2d,
                              (torch.randn(2, 3, 7, 6, requires_grad=True), (3, 4)), dtype=dtype)
    with torchbp.manual_backward():
        for y in (F.adaptive_max_pool2d(x, 2), F.adaptive_max_pool2d(x, 2, return_indices=True)[0],
                  F.adaptive_max_pool1d(x[0], 2)):
            assert type(y.grad_fn).__name__ == "MaxPoolBackward"


def test_conv_noncontiguous_and_partial_grads():
    x = torch.randn(2, 7, 3, 6, dtype=torch.float64).permute(0, 2, 3, 1)  # non-contiguous, no grad
    W = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.conv2d, F.conv2d, (x, W, torch.randn(4, dtype=torch.float64)), dict(stride=2))
    W = torch.randn(4, 3, 3, 3, dtype=torch.float64)  # only the input needs its δ
    assert_matches_native(tbf.conv2d, F.conv2d, (x.clone().requires_grad_(), W), dict(padding=1))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    native, twin = _pair(nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3), torch.float32)
    native.to(device), twin.to(device)
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        yn, ys = native(x), twin(x)
        pn, ps = F.max_pool2d(yn, 2), tbf.max_pool2d(ys, 2)
    assert yn.dtype == ys.dtype == pn.dtype == ps.dtype == dtype
    torch.testing.assert_close(ys, yn, rtol=0, atol=0)
    gn = torch.autograd.grad(pn.float().sum(), [x, *native.parameters()])
    gs = torch.autograd.grad(ps.float().sum(), [x, *twin.parameters()])
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_twins_state_dict_and_isinstance():
    for cls, kw, _ in CASES:
        native = cls(**kw)
        twin = torchbp.swap(cls(**kw))
        assert isinstance(twin, cls) and type(twin).forward is not cls.forward
        assert list(twin.state_dict()) == list(native.state_dict())
        assert repr(twin).replace("[δ]", "") == repr(native)
        twin.load_state_dict(native.state_dict())
        assert type(torchbp.unswap(twin)) is cls


def test_bad_input_names_op():
    with pytest.raises(RuntimeError, match=r"torchbp.functional.conv2d: input has 4 channels"):
        tbf.conv2d(torch.randn(2, 4, 5, 5), torch.randn(3, 3, 3, 3))
    with pytest.raises(RuntimeError, match=r"conv2d: expected 3-D \(unbatched\) or 4-D \(batched\) input"):
        tbf.conv2d(torch.randn(4, 5), torch.randn(3, 4, 3, 3))
    with pytest.raises(RuntimeError, match=r"conv1d: weight must be 3-D"):
        tbf.conv1d(torch.randn(2, 4, 5), torch.randn(3, 4, 3, 3))
    with pytest.raises(RuntimeError, match=r"conv2d: padding='same' is not supported for strided"):
        tbf.conv2d(torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), stride=2, padding="same")
    with pytest.raises(RuntimeError, match=r"conv2d: bias must have shape \[3\]"):
        tbf.conv2d(torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(4))
    with pytest.raises(RuntimeError, match=r"max_pool2d: expected 3-D \(unbatched\) or 4-D"):
        tbf.max_pool2d(torch.randn(5, 5), 2)
    with pytest.raises(RuntimeError, match=r"adaptive_avg_pool2d: output_size must be an int or a tuple of 2"):
        tbf.adaptive_avg_pool2d(torch.randn(1, 5, 5), (1, 2, 3))
    with pytest.raises(RuntimeError, match=r"avg_pool1d: kernel_size must be an int or a tuple of 1"):
        tbf.avg_pool1d(torch.randn(1, 5, 5), (2, 2))


PAD_CASES = [  # (shape, pad, mode, value)
    ((2, 3, 7), (2, 1), "constant", None), ((2, 3, 7), (-2, 3), "constant", 1.5),
    ((2, 3, 5, 6), (1, -2, 0, 3), "constant", -0.25), ((2, 3, 4, 5, 3), (1, 1, 0, 2, 1, 0), "constant", None),
    ((3, 7), (1, 2), "reflect", None), ((2, 3, 5, 6), (2, 1, 3, 0), "reflect", None),
    ((2, 3, 7), (3, 0), "replicate", None), ((2, 3, 5, 6), (1, 2, 2, 1), "replicate", None),
    ((2, 3, 7), (3, 2), "circular", None), ((2, 3, 5, 6), (1, 2, 0, 3), "circular", None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,pad,mode,value", PAD_CASES)
def test_pad_float64_and_gradchecks(shape, pad, mode, value, device):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    kw = {"mode": mode, "value": value}
    assert_matches_native(tbf.pad, F.pad, (x, pad), kw, device=device)
    if device == "cpu" and x.numel() <= 200:
        gradchecks(tbf.pad, (x, pad), kw)


@pytest.mark.parametrize("dtype", LOW)
def test_pad_low_precision(dtype):
    assert_matches_native(tbf.pad, F.pad, (torch.randn(2, 3, 6, requires_grad=True), (2, -1)), {"value": 0.5},
                          dtype=dtype)


def test_pad_modules_swap_route_and_refuse_like_torch():
    native = nn.Sequential(nn.ReflectionPad2d((1, 2, 0, 1)), nn.Conv2d(2, 3, 3), nn.ZeroPad2d(1),
                           nn.ConstantPad2d((-1, 2, 0, 1), 3.5), nn.ReplicationPad2d(2), nn.CircularPad2d((1, 0, 0, 1)),
                           nn.Flatten(0, 1), nn.ReflectionPad1d(1)).double()
    twin = torchbp.swap(copy.deepcopy(native))
    assert all(type(m) is not type(n) and isinstance(m, type(n)) for m, n in zip(twin, native))
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    assert_matches_native(fs, fn, (torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True), *ps))
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    with torchbp.manual_backward():
        assert type(F.pad(x, (1, 1), mode="reflect").grad_fn).__name__ == "PadBackward"
    for mode in ("reflect", "replicate", "circular"):  # negative pads crop in every mode, as native's
        assert_matches_native(lambda t: tbf.pad(t, (-1, 2), mode=mode), lambda t: F.pad(t, (-1, 2), mode=mode), (x,))
    with pytest.raises((RuntimeError, ValueError), match="torchbp.functional.pad"):
        tbf.pad(x, (5, 5), mode="reflect")  # F.pad's own error: a reflection pad must be < the input size


# --- transposed convolution ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw,shape,output_size", [
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=3, padding=1), (2, 3, 5), [15]),
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), (3, 5), [4, 12]),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3), padding=1), (2, 3, 4, 5),
     (8, 15)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=4, kernel_size=2, stride=2, groups=2, bias=False),
     (2, 4, 3, 3), torch.Size([2, 4, 7, 6])),
])
def test_conv_transpose_output_size(cls, kw, shape, output_size):
    """forward(x, output_size) picks output_padding as torch's forward does (the module's _output_padding)."""
    native, twin = _pair(cls, kw)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = twin(x, output_size)
    n = 1 if cls is nn.ConvTranspose1d else 2
    assert y.shape[-n:] == tuple(output_size)[-n:] == native(x, output_size).shape[-n:]
    names = [n for n, _ in native.named_parameters()]
    fs, fn = [lambda x, *ps, m=m: torch.func.functional_call(m, dict(zip(names, ps)), (x, output_size))
              for m in (twin, native)]
    assert_matches_native(fs, fn, (x, *twin.parameters()))
    with pytest.raises(ValueError, match="requested an output size"):
        twin(x, [s + 5 for s in output_size])


def test_conv_transpose_functional_routes_and_partial_grads():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.conv_transpose2d, F.conv_transpose2d, (x, W, b, 2, 1, 1, 2, 1))
    assert_matches_native(tbf.conv_transpose2d, F.conv_transpose2d, (x, W), dict(stride=(1, 2), dilation=2,
                                                                                  output_padding=(1, 0), groups=2))
    assert_matches_native(tbf.conv_transpose1d, F.conv_transpose1d, (x[:, :, 0], W[..., 0], b[:3]),
                          dict(stride=2, padding=1))
    for native in (F.conv_transpose1d, F.conv_transpose2d):
        assert torchbp.registry.function_for(native) is getattr(tbf, native.__name__)
    xt = x.detach().permute(0, 1, 3, 2)  # non-contiguous, no grad: only ∂J/∂W, ∂J/∂b
    assert_matches_native(tbf.conv_transpose2d, F.conv_transpose2d, (xt, W, b[:3]), dict(stride=2))
    assert_matches_native(tbf.conv_transpose2d, F.conv_transpose2d, (x, W.detach()), dict(groups=2))  # only δ_a
    with torchbp.manual_backward():
        y = F.conv_transpose2d(x, W, b, groups=2)
    assert type(y.grad_fn).__name__ == "ConvTransposeBackward"


@pytest.mark.parametrize("device", DEVICES)
def test_conv_transpose_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    native, twin = _pair(nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2),
                         torch.float32)
    native.to(device), twin.to(device)
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        yn, ys = native(x), twin(x)
    assert yn.dtype == ys.dtype == dtype
    torch.testing.assert_close(ys, yn, rtol=0, atol=0)
    gn = torch.autograd.grad(yn.float().square().sum(), [x, *native.parameters()])
    gs = torch.autograd.grad(ys.float().square().sum(), [x, *twin.parameters()])
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_conv_transpose_bad_input_names_op():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(RuntimeError, match=r"conv_transpose2d: input has 4 channels"):
        tbf.conv_transpose2d(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(RuntimeError, match=r"conv_transpose2d: output_padding \(2, 2\) must be smaller"):
        tbf.conv_transpose2d(x, torch.randn(4, 2, 3, 3), stride=2, output_padding=2)
    with pytest.raises(RuntimeError, match=r"conv_transpose2d: bias must have shape \[4\]"):
        tbf.conv_transpose2d(x, torch.randn(4, 2, 3, 3), torch.randn(2), groups=2)
    with pytest.raises(RuntimeError, match=r"conv_transpose1d: weight must be 3-D"):
        tbf.conv_transpose1d(x[:, :, 0], torch.randn(4, 2, 3, 3))
    with pytest.raises(RuntimeError, match=r"conv_transpose1d: in_channels 4 not divisible by groups 3"):
        tbf.conv_transpose1d(x[:, :, 0], torch.randn(4, 2, 3), groups=3)


def _unet():
    class UNetish(nn.Module):
        """Conv2d down, ConvTranspose2d up (output_size: the skip's), InstanceNorm2d, a skip connection."""

        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            # (no bias: the instance norm's mean would cancel it, its exact gradient 0, both sides' noise)
            self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, bias=False)
            self.norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
            self.head = nn.Conv2d(7, 2, 1)

        def forward(self, x):
            h = self.norm(self.up(torch.relu(self.down(x)), output_size=x.shape[-2:]))
            return self.head(torch.cat([torch.relu(h), x], 1))

    return UNetish()


def test_unet_like_model_swapped_and_audited():
    torch.manual_seed(0)
    native = _unet().double()
    for p in native.norm.parameters():
        nn.init.normal_(p)
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin.up) is torchbp.nn.ConvTranspose2d and type(twin.norm) is torchbp.nn.InstanceNorm2d
    fs, ps = _module_fn(twin)
    fn, _ = _module_fn(native)
    for train in (True, False):
        native.train(train), twin.train(train)
        assert_matches_native(fs, fn, (torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True), *ps))
        for a, b in zip(twin.buffers(), native.buffers()):
            assert torch.equal(a, b)
    r = torchbp.audit(_unet().double(), torch.randn(2, 3, 9, 7, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0, r


@pytest.mark.parametrize("dtype", LOW)
def test_conv2d_half_weight_gradient_in_batch_chunks(dtype):
    """CPU half precision: ∂J/∂W summed over batch chunks sized by δ's positions (2 samples a chunk at
    32², 4 at 30²: several chunks here), each chunk's part added in float32; the same against the float64
    oracle as native."""
    for shape, kw in (((6, 16, 32, 32), dict(padding=1)), ((8, 3, 32, 32), dict()),
                      ((5, 8, 20, 20), dict(stride=2, groups=2))):
        native, twin = _pair(nn.Conv2d, dict(in_channels=shape[1], out_channels=8, kernel_size=3, **kw))
        fs, ps = _module_fn(twin)
        fn, _ = _module_fn(native)
        x = torch.randn(shape, requires_grad=True)
        assert_matches_native(fs, fn, (x, *[p.float() for p in ps]), dtype=dtype)
