"""fastpath.pooling against the plain native call: max_pool2d_with_indices through the channels-last kernel
gives the same values and indices (ties and NaN included) in every floating dtype, on both sides of its
channel threshold, and the plain call where it does not apply (non-contiguous, unbatched, vmap)."""
import pytest
import torch

from torchbp.functional.fastpath import pooling as fp

from util import DEVICES, RecordOps

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
ARGS = [((2, 2), (2, 2), (0, 0), (1, 1), False), ((3, 3), (2, 2), (1, 1), (1, 1), True),
        ((2, 3), (1, 2), (1, 0), (2, 1), False)]


def plain(x, *args):
    return torch._C._nn.max_pool2d_with_indices(x, *args)


def _input(C, dtype, device, special):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, 9, 8, generator=g, dtype=torch.float64)
    if special:  # ties (a repeated value, ±0) and NaN
        x = x.round()
        x[0, 0, 1, 1], x[1, -1, 4, 4], x[0, -1, 0, 0], x[0, -1, 0, 1] = float("nan"), float("nan"), 0.0, -0.0
    return x.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [fp.CHANNELS_LAST_MIN_CHANNELS - 1, fp.CHANNELS_LAST_MIN_CHANNELS, 16])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "ties-nan"])
@pytest.mark.parametrize("args", ARGS, ids=lambda a: f"k{a[0]}s{a[1]}p{a[2]}d{a[3]}c{a[4]}")
def test_max_pool2d_is_the_plain_call(args, special, C, dtype, device):
    x = _input(C, dtype, device, special)
    assert fp.channels_last_applies(x) == (device == "cpu" and C >= fp.CHANNELS_LAST_MIN_CHANNELS)
    out, idx = fp.max_pool2d_with_indices(x, *args)
    want_out, want_idx = plain(x, *args)
    assert out.is_contiguous() and idx.is_contiguous()
    assert torch.equal(idx, want_idx)
    assert torch.equal(out.isnan(), want_out.isnan()) and torch.equal(out[~out.isnan()], want_out[~want_out.isnan()])


def test_max_pool2d_where_the_channels_last_kernel_does_not_apply():
    x = _input(16, torch.float32, "cpu", True)
    for y in (x.transpose(2, 3), x[0], x.contiguous(memory_format=torch.channels_last)):
        assert not fp.channels_last_applies(y) or y.dim() == 4 and y.is_contiguous()
        out, idx = fp.max_pool2d_with_indices(y, *ARGS[1])
        want_out, want_idx = plain(y, *ARGS[1])
        assert torch.equal(idx, want_idx) and torch.equal(out.isnan(), want_out.isnan())
    assert not fp.channels_last_applies(x.transpose(2, 3)) and not fp.channels_last_applies(x[0])
    batched = torch.func.vmap(lambda t: fp.max_pool2d_with_indices(t, *ARGS[0])[0])(x[None])
    torch.testing.assert_close(batched[0], plain(x, *ARGS[0])[0], rtol=0, atol=0, equal_nan=True)


# --- global average pooling: adaptive pooling to one position --------------------------------------------

GLOBAL = [(1, (2, 3, 10)), (1, (3, 5)), (2, (2, 3, 7, 6)), (3, (2, 2, 3, 4, 5))]


def _adaptive_avg(n):
    import torchbp.functional as tbf
    return getattr(tbf, f"adaptive_avg_pool{n}d"), getattr(torch.nn.functional, f"adaptive_avg_pool{n}d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, shape", GLOBAL, ids=str)
def test_global_average_pooling_backward_is_native_and_builds_no_window(n, shape, dtype):
    """δ_prev = δ / ∏L over the whole map: native's values (bit for bit: one division per element, rounded
    once), NaN and ±inf δ staying in their own (sample, channel), contiguous, and no window matrices built (a
    handful of ops, none of them the windows' arange / comparisons)."""
    ours, native = _adaptive_avg(n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    delta = torch.randn(*shape[:-n], *[1] * n, generator=g, dtype=torch.float64).to(dtype)
    delta.view(-1)[0], delta.view(-1)[-1] = float("nan"), float("inf")
    grads = []
    for fn in (ours, native):
        xr = x.clone().requires_grad_()
        out = fn(xr, 1)
        with RecordOps() as ops:
            out.backward(delta)
        grads.append((xr.grad, ops.names))
    (got, names), (want, _) = grads
    assert got.is_contiguous() and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert "arange" not in names and len(names) <= 8, names
