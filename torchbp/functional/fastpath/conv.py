"""Faster forms of the convolution δ's formulas (``torchbp.functional.conv``).

The plain formulas there: ∂J/∂W = x ⋆ k as ONE convolution of x (batch and channels swapped) with k as the
kernel (``conv.weight_grad``; x = a, k = δ for a convolution, exchanged for a transposed one),
∂J/∂b = Σ_{batch, y} δ (``conv.bias_grad``) and δ_a = Wᵀ ⋆ δ, a transposed convolution (``conv._grad_a``).
The helpers here compute the same sums:

- ``weight_grad``: picks the form by device, dtype and shape:
  * CPU, float64 and float32, a pointwise convolution (``pointwise``) with more than one position per sample:
    ``weight_grad_pointwise`` (the windows are x itself: one product per sample accumulated into W by
    addbmm, with no copy of x or k; the GEMM form gathers both into (channels, N·Y) copies first).
  * CPU, float64, and float32 where ``gemm_form`` says so: ``weight_grad_gemm`` (the input windows unfolded,
    one matrix product per group), in batch chunks that keep the unfolded copy small. oneDNN runs the
    plain formula's convolution (a kernel the size of the feature map, an output the size of W) with
    forward-convolution kernels built for small kernels, and needs both operands copied into its layouts
    (x and k are transposed views); a GEMM returns ∂J/∂W in W's own layout, so autograd accumulates it
    without a copy.
  * CPU, other float32 2-D convolutions: the plain convolution with its kernel channels-last (the samples
    innermost), one vector of samples (``cpu_vector_floats``) per batch chunk.
  * CPU, float16 / bfloat16: never the plain convolution in half precision. oneDNN's half-precision
    forward convolution returns wrong values for some of these shapes (a kernel the size of the feature
    map) on CPUs with AMX (bfloat16 ∂J/∂W with a relative error of 1 against the float64 oracle), where its
    matrix product and its float32 convolution are right. So ``weight_grad_gemm`` in half precision (a
    half-precision GEMM is about as fast as oneDNN's half-precision convolution here, and beats the float32
    one), but for strided few-channel stems (``half_gemm_form``): there the convolution on float32 copies
    of each batch chunk; the chunks summed in float32.
  * otherwise the plain convolution in batch chunks of CHUNK_ELEMS δ elements; on CUDA in one call
    (launches cost more than the batch sum saves).
- ``bias_grad``: Σ δ, in float32 batch chunks for half-precision δ on the CPU.
- ``input_grad``: δ_a = Wᵀ ⋆ δ (``conv._grad_a``, a transposed convolution); on the CPU, for a pointwise
  convolution (kernel extent 1, stride 1, no padding, one group), the matrix product it is at every position
  (``input_grad_pointwise``): torch runs that transposed convolution one sample at a time through a path
  built for general kernels, with per-sample GEMMs whose inner size is a sample's positions.

No choice here reads a timing: the forms rest on what each kernel library does with these shapes, which
holds on AVX2 as on AVX-512 hosts. ``tests/test_fastpath_conv.py`` holds each form against the plain
formula in every dtype, on both sides of every threshold.
"""
from __future__ import annotations

import functools
import math

import torch

from . import cpu_vector_floats
from .._common import inplace_ok

CHUNK_ELEMS = 1 << 19  # elements per batch chunk of a sum over the batch (δ, or the unfolded input); 2 MiB float32

_HALF = (torch.float16, torch.bfloat16)


def _add(total, part):
    """total + part, in place where a backward may update its own temporaries."""
    return part if total is None else total.add_(part) if inplace_ok() else total + part


def n_chunks(n_samples, n_elems, chunk_elems=None):
    """How many batch chunks keep each under ``chunk_elems`` elements (at least 1, at most one per sample)."""
    per = CHUNK_ELEMS if chunk_elems is None else chunk_elems
    return max(1, min(n_samples, -(-n_elems // per)))


def weight_grad_gemm(x, k, s, p, d, g, K):
    """∂J/∂W = x ⋆ k (``conv.weight_grad``) as a matrix product: W[o, c, i] = Σ_{n, y} k[n, o, y] x[n, c, s·y + d·i − p]
    is, per group, k's rows (O/g, N·Y) times the windows of x unfolded (C/g · ∏K, N·Y)ᵀ; returns W's layout
    (O, C/g, *K), contiguous. One call over the batch given (``weight_grad`` chunks it)."""
    n = len(K)
    N, C = x.shape[:2]
    O, Y = k.shape[1], k.shape[2:]
    pad = [q for i in reversed(range(n)) for q in (p[i], p[i])]
    v = torch.constant_pad_nd(x, pad) if any(p) else x
    for i in range(n):  # the windows: (N, C, *positions, *K) as a view; dilation d takes every d-th of a span
        v = v.unfold(2 + i, d[i] * (K[i] - 1) + 1, s[i])
        if d[i] > 1:
            v = v[..., :: d[i]]
    for i in range(n):  # a transposed convolution's output_padding ≥ s gives positions past k's
        if v.shape[2 + i] != Y[i]:
            v = v.narrow(2 + i, 0, Y[i])
    # cols: (C, *K, N, *Y) -> (g, C/g · ∏K, N·∏Y), one copy; k: (O, N, *Y) -> (g, O/g, N·∏Y)
    cols = v.permute(1, *range(2 + n, 2 + 2 * n), 0, *range(2, 2 + n)).reshape(g, C // g * math.prod(K), -1)
    rows = k.transpose(0, 1).reshape(g, O // g, -1)
    gw = torch.mm(rows[0], cols[0].t()) if g == 1 else torch.bmm(rows, cols.transpose(1, 2))
    return gw.reshape(O, C // g, *K)


def gemm_form(x, k, g, K, s):
    """Whether the CPU's float32 ∂J/∂W takes ``weight_grad_gemm`` rather than the plain convolution: where
    that convolution's kernel (k's positions per sample) is small, or x has few channels per group, oneDNN
    runs it with little work per kernel tap (with stride 1 for the latter); a depthwise convolution's (one channel per group) goes the
    other way, its GEMMs degenerate to dot products, worth it only over enough positions. A pointwise (1×1)
    convolution's windows are x itself: always the GEMM."""
    cg, positions = x.shape[1] // g, math.prod(k.shape[2:])
    if all(i == 1 for i in K):  # a pointwise convolution: the windows are x itself, nothing to unfold
        return True
    if cg == 1:
        return positions > DEPTHWISE_MIN_POSITIONS
    # few channels (a stem): the GEMM where the windows are gathered with unit stride; a strided gather of
    # the unfolded copy costs more than oneDNN's strided convolution saves
    return positions <= GEMM_MAX_POSITIONS or cg < cpu_vector_floats() and all(i == 1 for i in s)


def half_gemm_form(x, g, s):
    """Whether the CPU's half-precision ∂J/∂W takes ``weight_grad_gemm``: always, but for a strided convolution
    with few channels per group (a stem), whose strided gather of the unfolded copy costs more than the
    convolution on float32 copies."""
    return all(i == 1 for i in s) or x.shape[1] // g >= cpu_vector_floats()


GEMM_MAX_POSITIONS = 64  # float32: the GEMM form up to this many k positions per sample, ...
DEPTHWISE_MIN_POSITIONS = 16  # ... and for a depthwise convolution, from above this many


def weight_grad(x, k, s, p, d, g, K, plain, chunk_elems=None, form=None):
    """∂J/∂W = x ⋆ k summed over the batch, in the form this device and dtype run fastest (the module's
    doc); ``plain`` is the plain formula (``conv._grad_W``), which the forms other than the GEMM call per
    batch chunk. Returns W's layout (O, C/g, *K), contiguous. ``form`` ("gemm", "channels_last", "plain")
    overrides the choice (tests); "pointwise" only for a pointwise convolution."""
    if x.shape[0] == 0:  # an empty batch: a sum over no samples
        return x.new_zeros((k.shape[1], x.shape[1] // g, *K))
    if x.device.type == "cuda" and form is None:
        return plain(x, k, s, p, d, g, K).contiguous()
    if form is None:
        if x.dtype in (torch.float64, torch.float32) and pointwise(K, s, p, g) and math.prod(x.shape[2:]) > 1:
            form = "pointwise"
        elif x.dtype == torch.float64 or x.dtype == torch.float32 and gemm_form(x, k, g, K, s) \
                or x.dtype in _HALF and half_gemm_form(x, g, s):
            form = "gemm"
        elif x.dtype != torch.float64 and len(K) == 2 and x.shape[1] // g >= cpu_vector_floats():
            form = "channels_last"
        else:
            form = "plain"
    if form == "pointwise":
        return weight_grad_pointwise(x, k)
    if form == "gemm":
        per_sample = x.shape[1] * math.prod(K) * math.prod(k.shape[2:])  # one sample's unfolded windows
        nc = n_chunks(x.shape[0], x.shape[0] * per_sample, chunk_elems)
        low = nc > 1 and x.dtype in _HALF
        gw = None
        for x_c, k_c in zip(x.chunk(nc), k.chunk(nc)):
            part = weight_grad_gemm(x_c, k_c, s, p, d, g, K)
            gw = _add(gw, part.float() if low else part)
        return gw.to(x.dtype) if low else gw
    nc = n_chunks(k.shape[0], k.numel(), chunk_elems)
    if form == "channels_last":
        # oneDNN's convolution with the kernel (k, batch and channels swapped) channels-last, i.e. the samples
        # innermost: one vector of samples per chunk
        nc = max(nc, -(-k.shape[0] // cpu_vector_floats()))
        plain = functools.partial(_channels_last_kernel, plain)
    half = x.dtype in _HALF
    if half and x.device.type == "cpu":  # never oneDNN's half-precision convolution (the module's doc)
        plain = functools.partial(_in_float32, plain)
    low = half and (nc > 1 or x.device.type == "cpu")  # the sum in float32, cast back once
    gw = None
    for x_c, k_c in zip(x.chunk(nc), k.chunk(nc)):
        part = plain(x_c, k_c, s, p, d, g, K)
        gw = _add(gw, part.float() if low else part)
    return (gw.to(x.dtype) if low else gw).contiguous()


def weight_grad_pointwise(x, k):
    """∂J/∂W = x ⋆ k (``conv.weight_grad``) for a pointwise convolution (``pointwise``): W[o, c] = Σ_n Σ_y k[n, o, y] x[n, c, y],
    per sample the product k_n (O, Y) times x_nᵀ (Y, C), summed over the batch into one (O, C) by addbmm, on x and
    k as they are. Returns W's layout (O, C, 1, ...), contiguous."""
    N, C, *Y = x.shape
    O = k.shape[1]
    gw = torch.addbmm(x.new_zeros(O, C), k.reshape(N, O, -1), x.reshape(N, C, -1).transpose(1, 2))
    return gw.view(O, C, *[1] * len(Y))


def _in_float32(plain, x, k, *args):
    """The plain formula on float32 copies of this chunk of x and k (half precision: see the module's doc)."""
    return plain(x.float(), k.float(), *args)


def _channels_last_kernel(plain, x, k, *args):
    """The plain formula with k stored so that, once its batch and channels are swapped into a kernel, the
    kernel is channels-last."""
    return plain(x, k.transpose(0, 1).contiguous(memory_format=torch.channels_last).transpose(0, 1), *args)


POINTWISE_BATCHED_MIN_POSITIONS = 16  # a pointwise δ_a per sample from this many positions, below as one product


def pointwise(K, s, p, g):
    """Whether a convolution is pointwise: every kernel extent 1, stride 1, no padding, one group (δ_a is then
    Wᵀ δ at every position, ``input_grad_pointwise``)."""
    return g == 1 and all(i == 1 for i in K) and all(i == 1 for i in s) and not any(p)


def input_grad(delta, W, s, p, d, g, L, plain, form=None):
    """δ_a = Wᵀ ⋆ δ (``conv._grad_a``, passed as ``plain``) in the form this device and shape run fastest (the
    module's doc). ``form`` ("pointwise", "plain") overrides the choice (tests)."""
    if form is None:
        form = "pointwise" if delta.device.type == "cpu" and pointwise(W.shape[2:], s, p, g) else "plain"
    if form == "pointwise":
        return input_grad_pointwise(delta, W)
    return plain(delta, W, s, p, d, g, L)


def input_grad_pointwise(delta, W):
    """δ_a = Wᵀ ⋆ δ (``conv._grad_a``) for a pointwise convolution (``pointwise``): δ_a[n, c, y] = Σ_o W[o, c] δ[n, o, y],
    i.e. Wᵀ (C, O) times each sample's δ (O, Y). With one position per sample, one product (N, O)(O, C) on δ and W
    as they are; with a few (under POINTWISE_BATCHED_MIN_POSITIONS), one product over all N·Y positions (δ
    gathered into (O, N·Y), the result back into δ_a's layout); from that many, one product per sample (bmm, no
    copies). Returns a's shape (N, C, *Y), contiguous."""
    N, O, *Y = delta.shape
    C, Ys = W.shape[1], math.prod(Y)
    w = W.reshape(O, C)
    if Ys == 1:
        return torch.mm(delta.reshape(N, O), w).view(N, C, *Y)
    if Ys < POINTWISE_BATCHED_MIN_POSITIONS:
        ga = torch.mm(w.t(), delta.transpose(0, 1).reshape(O, N * Ys))
        return ga.view(C, N, *Y).transpose(0, 1).contiguous()
    # bmm on Wᵀ expanded over the batch (no copy): torch.matmul of a 2-D weight that requires grad by a 3-D δ
    # takes a slower path than this, even where no graph is recorded
    return torch.bmm(w.t().expand(N, C, O), delta.reshape(N, O, Ys)).view(N, C, *Y)


def bias_grad(delta, plain, chunk_elems=None):
    """∂J/∂b = Σ_{batch, y} δ (``conv.bias_grad``); half precision on the CPU: in batch chunks, each summed
    in float32, so the float32 copy a half-precision sum makes is a chunk's."""
    nc = 1 if delta.device.type == "cuda" else n_chunks(delta.shape[0], delta.numel(), chunk_elems)
    if nc == 1 or delta.dtype not in _HALF:
        return plain(delta)
    dims = [0, *range(2, delta.dim())]
    return sum(d_c.sum(dims, dtype=torch.float32) for d_c in delta.chunk(nc)).to(delta.dtype)
