"""unfold / fold (nn.Unfold / Fold) and channel_shuffle (nn.ChannelShuffle) against native: float64,
gradcheck/gradgradcheck, low precision, twins, routes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.rearrange as tbr
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(3)


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


UNFOLD = [dict(kernel_size=2), dict(kernel_size=(2, 3), stride=2, padding=1),
          dict(kernel_size=3, dilation=(2, 1), padding=(2, 0), stride=(1, 2))]


@pytest.mark.parametrize("kw", UNFOLD)
@pytest.mark.parametrize("batched", [True, False])
def test_unfold_fold(kw, batched):
    x = _x(2, 3, 7, 8) if batched else _x(3, 7, 8)
    native, twin = nn.Unfold(**kw), torchbp.swap(nn.Unfold(**kw))
    assert type(twin) is not nn.Unfold and isinstance(twin, nn.Unfold)
    assert_matches_native(twin, native, (x,))
    cols = native(x.detach())
    c = _x(*cols.shape)
    nf, tf = nn.Fold((7, 8), **kw), torchbp.swap(nn.Fold((7, 8), **kw))
    assert_matches_native(tf, nf, (c,))
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(twin, native, (x,), dtype=dtype)
        assert_matches_native(tf, nf, (c,), dtype=dtype)


def test_unfold_fold_gradchecks_and_routes():
    gradchecks(lambda t: tbr.unfold(t, 2, padding=1, stride=2), (_x(1, 2, 3, 4),))
    gradchecks(lambda t: tbr.fold(t, (3, 4), 2, padding=1, stride=1), (_x(1, 8, 20),))
    x = _x(2, 3, 5, 5)
    with torchbp.manual_backward():
        y = F.fold(F.unfold(x, 2), (5, 5), 2)
        z = F.channel_shuffle(x.transpose(0, 1).reshape(1, 6, 5, 5), 2)
    assert grad_fn_names(y)[:2] == ["FoldBackward", "UnfoldBackward"], grad_fn_names(y)
    assert grad_fn_names(z)[0] == "ChannelShuffleBackward"


@pytest.mark.parametrize("shape,groups", [((2, 6, 3, 4), 3), ((2, 6, 5), 2), ((1, 8, 2, 2, 2), 4), ((3, 6, 4), 6)])
def test_channel_shuffle(shape, groups):
    x = _x(*shape)
    native, twin = nn.ChannelShuffle(groups), torchbp.swap(nn.ChannelShuffle(groups))
    assert type(twin) is not nn.ChannelShuffle
    assert_matches_native(twin, native, (x,))
    assert_matches_native(twin, native, (x,), dtype=torch.bfloat16)
    gradchecks(lambda t: tbr.channel_shuffle(t, groups), (x,))


def test_errors_name_the_op():
    with pytest.raises(RuntimeError, match="channel_shuffle: groups=4 must be a positive int dividing the 6"):
        tbr.channel_shuffle(torch.randn(1, 6, 2), 4)
    with pytest.raises(RuntimeError, match="unfold: expected 3-D"):
        tbr.unfold(torch.randn(2, 3), 2)
