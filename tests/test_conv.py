"""δ convolution (torchbp.functional.conv: 1-3-d, transposed, pad) beyond the common matrix (tests/cases/conv.py
drives float64, gradcheck, low precision, autocast, vmap and routing over the module cases, and the refused
inputs): ∂J/∂W in batch chunks and channels-last, functional forms, routes, twins, pad modules, output_size,
a U-Net audited."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases.conv import CONV_CASES, CONV_GRADCHECK, CONVT_CASES
from cases.pooling import POOL_CASES
from util import LOW, assert_matches_native, gradchecks, module_fn as _module_fn, twin_pair as _pair


def _ids(case):
    cls, kw, shape = case
    return f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{'x'.join(map(str, shape))}"


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


@pytest.mark.parametrize("case", CONV_GRADCHECK, ids=[_ids(c) for c in CONV_GRADCHECK])
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


def test_functional_forms_and_routes():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.conv2d, F.conv2d, (x, W, None, 2, "valid", 1, 2))
    assert_matches_native(tbf.conv1d, F.conv1d, (x[:, :, 0], W[..., 0], None), dict(padding="same", groups=2))
    assert_matches_native(tbf.max_pool2d, F.max_pool2d, (x, 3, 2, 1), dict(return_indices=True))
    assert_matches_native(tbf.max_pool2d_with_indices, F.max_pool2d_with_indices, (x, 2))
    assert_matches_native(tbf.max_pool1d_with_indices, F.max_pool1d_with_indices, (x[:, 0], 3, 1))
    assert_matches_native(tbf.avg_pool2d, F.avg_pool2d, (x, 3, 2, 1, True, False, None))
    # (each routed native against the δ its route names: the matrix's pooling.routed-* cases)
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


def test_conv_noncontiguous_and_partial_grads():
    x = torch.randn(2, 7, 3, 6, dtype=torch.float64).permute(0, 2, 3, 1)  # non-contiguous, no grad
    W = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_matches_native(tbf.conv2d, F.conv2d, (x, W, torch.randn(4, dtype=torch.float64)), dict(stride=2))
    W = torch.randn(4, 3, 3, 3, dtype=torch.float64)  # only the input needs its δ
    assert_matches_native(tbf.conv2d, F.conv2d, (x.clone().requires_grad_(), W), dict(padding=1))


def test_twins_state_dict_and_isinstance():
    for cls, kw, _ in CONV_CASES + CONVT_CASES + POOL_CASES:
        native = cls(**kw)
        twin = torchbp.swap(cls(**kw))
        assert isinstance(twin, cls) and type(twin).forward is not cls.forward
        assert list(twin.state_dict()) == list(native.state_dict())
        assert repr(twin).replace("[δ]", "") == repr(native)
        twin.load_state_dict(native.state_dict())
        assert type(torchbp.unswap(twin)) is cls


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
