"""Upsampling (``F.interpolate``, ``nn.Upsample``) and pixel shuffling: layers without weights, so the
derivation's δ only passes through them to the layer below.

Interpolation is linear in its input and separable over the spatial dims: along dim d the output is
a_up[y] = Σ_j B_d[j, y] a[j], with B_d (L × O) the per-dim interpolation weights (nearest: one 1 per
column; linear: two weights; cubic: four). So δ_a = B_d δ along every dim, done sparsely: for each of the
column's k taps, δ scaled by its weight is added onto its input position (``index_add``).

B_d is native's own: the 1-D (or, for cubic, 2-D) interpolation of an identity matrix with the same size
or scale, mode and align_corners, so the weights (and nearest's rounding of source positions) are exactly
the ones native's forward used.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, _named, check, check_tensor, inplace_ok
from .pooling import adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d

# mode -> (taps per output position along a dim, the mode of that dim's own interpolation)
_SEPARABLE = {"nearest": (1, "nearest"), "nearest-exact": (1, "nearest-exact"), "linear": (2, "linear"),
              "bilinear": (2, "linear"), "trilinear": (2, "linear"), "bicubic": (4, "bicubic")}
_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=256)
def _cached_plan(L, O, scale, mode, align_corners, taps):
    """One dim's (B, rows, r) on the CPU (small; read there without a device sync), the same for every
    step of a training run, hence cached: B (L × O) float64 with column y the weights of the inputs output
    y reads, rows (k × O) their row indices, r the whole factor when nearest copies each input to r
    consecutive outputs (else None)."""
    B = _weights(L, O, scale, mode, align_corners)
    k = min(taps, L)  # a column's taps are distinct rows (clamped ones were merged into one)
    rows = B.abs().topk(k, dim=0).indices if k > 1 else B.argmax(0, keepdim=True)
    r = O // L if taps == 1 and O % L == 0 and torch.equal(rows[0], torch.arange(O) // (O // L)) else None
    return B, rows, r


def _plan(L, O, scale, mode, align_corners, taps):
    """``_cached_plan``; under torch.compile called as it is (its tensors become constants of the graph)
    instead of traced: its ``torch.equal`` would break the graph, and dynamo ignores lru_cache anyway."""
    return _cached_plan(L, O, scale, mode, align_corners, taps)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    _plan = torch.compiler.assume_constant_result(_plan)


def _weights(L, O, scale, mode, align_corners):
    eye = torch.eye(L, dtype=torch.float64)
    kw = {"scale_factor": scale, "recompute_scale_factor": False} if scale is not None else {"size": O}
    if mode == "bicubic":  # 2-D only: the other dim of size 1 is the identity
        kw = {"scale_factor": (scale, 1.0), "recompute_scale_factor": False} if scale is not None \
            else {"size": (O, 1)}
        return F.interpolate(eye.view(L, 1, L, 1), mode=mode, align_corners=align_corners, **kw).view(L, O)
    return F.interpolate(eye.view(L, 1, L), mode=mode, align_corners=align_corners, **kw).view(L, O)


class Interpolate(DeltaFunction):
    """a_up = Bᵀ a along every spatial dim (B per dim, above);  δ_a = B δ along every dim."""

    @staticmethod
    def forward(a, size, scale_factor, mode, align_corners, recompute_scale_factor):
        return F.interpolate(a, size, scale_factor, mode, align_corners, recompute_scale_factor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, _, scale_factor, ctx.mode, ctx.align_corners, recompute = inputs
        n = a.dim() - 2
        # the scales native's kernel was given: the user's, unless it recomputed them from the sizes
        scales = None if scale_factor is None or recompute else \
            (tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * n)
        ctx.a_shape, ctx.scales = a.shape, scales

    @staticmethod
    def backward(ctx, delta):
        taps, mode = _SEPARABLE[ctx.mode]
        plans = [_plan(L, O, None if ctx.scales is None else ctx.scales[i], mode, ctx.align_corners, taps)
                 for i, (L, O) in enumerate(zip(ctx.a_shape[2:], delta.shape[2:]))]
        g = delta.float() if delta.dtype in _HALF else delta  # sums of weighted δ: in float32 for half types
        for i, (B, rows, r) in enumerate(plans):
            dim, L, O = 2 + i, ctx.a_shape[2 + i], delta.shape[2 + i]
            if r is not None:
                # nearest by a whole factor r: input j was copied to outputs jr … jr + r − 1; summing those r
                # slices is one vectorised pass each (an index_add or a strided sum is 2-6x slower on CPU)
                blocks = g.unflatten(dim, (L, r))
                acc = blocks.select(dim + 1, 0)
                for t in range(1, r):
                    acc = acc.add_(blocks.select(dim + 1, t)) if t > 1 and inplace_ok() \
                        else acc + blocks.select(dim + 1, t)
                g = acc
                continue
            B, rows = B.to(device=delta.device, dtype=g.dtype), rows.to(delta.device)
            shape = list(g.shape)
            shape[dim] = L
            out = g.new_zeros(shape)
            view = (O,) + (1,) * (g.dim() - dim - 1)
            for t in range(rows.shape[0]):
                src = g if taps == 1 else g * B.gather(0, rows[t:t + 1]).view(view)
                out = out.index_add_(dim, rows[t], src)
            g = out
        return g.to(delta.dtype), None, None, None, None, None


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """δ twin of ``torch.nn.functional.interpolate`` for modes nearest, nearest-exact, linear, bilinear,
    trilinear, bicubic (without antialias) and area (adaptive average pooling)."""
    op = "interpolate"
    check_tensor(op, "input", input)
    check(not antialias, op, "antialias=True is not supported (its weights span a variable number of inputs)")
    if mode == "area":  # native: adaptive_avg_pool to the output size
        check(input.dim() in (3, 4, 5), op, f"mode 'area' is supported for 3-D, 4-D and 5-D inputs, got "
              f"{input.dim()}-D")
        size = _size(input, size, scale_factor, recompute_scale_factor, op)
        return {3: adaptive_avg_pool1d, 4: adaptive_avg_pool2d, 5: adaptive_avg_pool3d}[input.dim()](input, size)
    check(mode in _SEPARABLE, op, f"mode {mode!r} is not supported (use one of {sorted(_SEPARABLE)} or 'area')")
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    if isinstance(size, list):
        size = tuple(size)
    if isinstance(scale_factor, list):
        scale_factor = tuple(scale_factor)
    with _named(op):  # native's own checks of sizes, scales, modes and dims
        return Interpolate.apply(input, size, scale_factor, mode, align_corners, recompute_scale_factor)


def _size(input, size, scale_factor, recompute_scale_factor, op):
    """The output size F.interpolate computes for mode 'area' (which recomputes its scales)."""
    n = input.dim() - 2
    if size is not None:
        return size
    check(scale_factor is not None, op, "either size or scale_factor should be defined")
    scales = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * n
    return tuple(int(input.shape[2 + i] * float(s)) for i, s in enumerate(scales))


class PixelShuffle(DeltaFunction):
    """A permutation of the elements (channels r² → an r × r block), so δ_a is the inverse permutation of
    δ: pixel_unshuffle for pixel_shuffle and back (``inverse`` says which way this instance goes)."""

    @staticmethod
    def forward(a, r, inverse):
        return F.pixel_unshuffle(a, r) if inverse else F.pixel_shuffle(a, r)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.r, ctx.inverse = inputs

    @staticmethod
    def backward(ctx, delta):
        return (F.pixel_shuffle(delta, ctx.r) if ctx.inverse else F.pixel_unshuffle(delta, ctx.r)), None, None


def _shuffle(op, input, factor, inverse):
    check_tensor(op, "input", input)
    with _named(op):
        return PixelShuffle.apply(input, int(factor), inverse)


def pixel_shuffle(input, upscale_factor):
    """δ twin of ``torch.nn.functional.pixel_shuffle``."""
    return _shuffle("pixel_shuffle", input, upscale_factor, False)


def pixel_unshuffle(input, downscale_factor):
    """δ twin of ``torch.nn.functional.pixel_unshuffle``."""
    return _shuffle("pixel_unshuffle", input, downscale_factor, True)


ROUTES = {F.interpolate: interpolate, F.pixel_shuffle: pixel_shuffle, F.pixel_unshuffle: pixel_unshuffle}
__all__ = ["interpolate", "pixel_shuffle", "pixel_unshuffle"]
