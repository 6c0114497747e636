"""Faster forms for the pooling family (``torchbp.functional.pooling``).

- ``max_pool2d_with_indices``: native's max_pool2d_with_indices (the forward whose indices the max-pool δ
  scatters to), on the CPU through its channels-last kernel from CHANNELS_LAST_MIN_CHANNELS channels: the
  NCHW kernel is scalar, the channels-last one vectorises over channels and picks the same elements (ties,
  NaN), worth the two layout copies from that many channels. Same values and indices as the plain call.

``tests/test_fastpath_pooling.py`` holds it against the plain call in every floating dtype, on both sides of
its threshold.
"""
from __future__ import annotations

import torch

CHANNELS_LAST_MIN_CHANNELS = 8

_is_batched = getattr(torch._C._functorch, "is_batchedtensor", lambda x: False)


def channels_last_applies(x):
    """Whether ``max_pool2d_with_indices`` takes the channels-last kernel for this input."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[1] >= CHANNELS_LAST_MIN_CHANNELS
            and x.is_contiguous() and not _is_batched(x))  # vmap cannot query memory formats


def max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode):
    """torch's max_pool2d_with_indices (output, indices), both contiguous as the plain call's."""
    if channels_last_applies(x):
        out, idx = torch._C._nn.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last),
                                                        kernel_size, stride, padding, dilation, ceil_mode)
        return out.contiguous(), idx.contiguous()
    return torch._C._nn.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
