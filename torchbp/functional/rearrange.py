"""Rearrangements: unfold / fold (im2col / col2im) and channel_shuffle. They move values without changing
them, so δ moves back: unfold and fold are each other's transpose, a channel shuffle's inverse is the shuffle
with the complementary group count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Unfold(DeltaFunction):
    """a = im2col(a_prev): column l of sample n holds the k_h·k_w patch of every channel at window l.

    backward: δ_prev = col2im(δ) = fold(δ): each input element sums the δ's of every patch position that
    read it (zero padding reads nothing back).
    """

    @staticmethod
    def forward(x, kernel_size, dilation, padding, stride):
        return torch._C._nn.im2col(x, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride = inputs
        ctx.size = tuple(x.shape[-2:])

    @staticmethod
    def backward(ctx, delta):
        return (torch._C._nn.col2im(delta, ctx.size, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride),
                None, None, None, None)


class Fold(DeltaFunction):
    """a = col2im(a_prev): the sum, at every output position, of the patch entries placed there.

    backward: δ_prev = im2col(δ) = unfold(δ): each patch entry receives the δ of the position it was added to.
    """

    @staticmethod
    def forward(x, output_size, kernel_size, dilation, padding, stride):
        return torch._C._nn.col2im(x, output_size, kernel_size, dilation, padding, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride = inputs

    @staticmethod
    def backward(ctx, delta):
        return (torch._C._nn.im2col(delta, ctx.kernel_size, ctx.dilation, ctx.padding, ctx.stride),
                None, None, None, None, None)


class ChannelShuffle(DeltaFunction):
    """a = channel_shuffle(a_prev, g): channels viewed as (g, C/g), transposed to (C/g, g).

    backward: δ_prev = channel_shuffle(δ, C/g), the inverse permutation: δ's channels viewed as (C/g, g),
    transposed back to (g, C/g).
    """

    @staticmethod
    def forward(x, groups):
        return torch.native_channel_shuffle(x, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.groups = inputs[1]

    @staticmethod
    def backward(ctx, delta):
        N, C, *rest = delta.shape
        g = ctx.groups
        return delta.reshape(N, C // g, g, *rest).transpose(1, 2).reshape(delta.shape), None


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """δ twin of ``torch.nn.functional.unfold``."""
    check_tensor("unfold", "input", input)
    check(input.dim() in (3, 4), "unfold", f"expected 3-D (unbatched) or 4-D input, got shape {list(input.shape)}")
    return Unfold.apply(input, _pair(kernel_size), _pair(dilation), _pair(padding), _pair(stride))


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """δ twin of ``torch.nn.functional.fold``."""
    check_tensor("fold", "input", input)
    check(input.dim() in (2, 3), "fold", f"expected 2-D (unbatched) or 3-D input, got shape {list(input.shape)}")
    return Fold.apply(input, _pair(output_size), _pair(kernel_size), _pair(dilation), _pair(padding),
                      _pair(stride))


def channel_shuffle(input, groups):
    """δ twin of ``torch.nn.functional.channel_shuffle`` (``torch.channel_shuffle``)."""
    check_tensor("channel_shuffle", "input", input)
    check(input.dim() >= 3, "channel_shuffle", f"expected an input of 3 or more dims, got shape {list(input.shape)}")
    check(isinstance(groups, int) and groups > 0 and input.shape[1] % groups == 0, "channel_shuffle",
          f"groups={groups!r} must be a positive int dividing the {input.shape[1]} channels")
    return ChannelShuffle.apply(input, groups)


def _im2col(input, kernel_size, dilation, padding, stride):
    return unfold(input, kernel_size, dilation, padding, stride)


def _col2im(input, output_size, kernel_size, dilation, padding, stride):
    return fold(input, output_size, kernel_size, dilation, padding, stride)


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.unfold: unfold, F.fold: fold, torch._C._nn.im2col: _im2col, torch._C._nn.col2im: _col2im,
          torch.channel_shuffle: channel_shuffle, torch.native_channel_shuffle: channel_shuffle}

__all__ = ["unfold", "fold", "channel_shuffle"]
