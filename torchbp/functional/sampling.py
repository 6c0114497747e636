"""Spatial transformers: affine_grid and grid_sample (2-D; bilinear and nearest; zeros, border and reflection
padding).

grid_sample reads the input at real-valued positions: each output is a weighted sum of the input at the corners
around its position, so δ_input scatters δ back to those corners with the same weights, and δ_grid is δ times
the weights' slope in x and y. Other modes (bicubic, 3-D volumes) run native grid_sample, whose
gradient is then native's (the audit reports it as such).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DeltaFunction, check, check_tensor


class AffineGrid(DeltaFunction):
    """grid[n, p] = θ_n · (x_p, y_p, 1) for the base grid's points p (−1 … 1, shrunk by (L−1)/L per dim unless
    align_corners); the 3-D case with (x, y, z, 1).

    backward: ∂J/∂θ_n = Σ_p δ_grid[n, p] (x_p, y_p, 1)ᵀ   (δ_gridᵀ times the base grid).
    """

    @staticmethod
    def forward(theta, size, align_corners):
        return torch.affine_grid_generator(theta, size, align_corners)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.size, ctx.align_corners = inputs

    @staticmethod
    def backward(ctx, delta):
        d = len(ctx.size) - 2  # spatial dims
        eye = torch.eye(d, d + 1, dtype=delta.dtype, device=delta.device).unsqueeze(0)
        base = torch.affine_grid_generator(eye, [1, 1, *ctx.size[2:]], ctx.align_corners).reshape(-1, d)
        base = torch.cat([base, torch.ones_like(base[:, :1])], 1)  # (P, d + 1)
        N = delta.shape[0]
        return delta.reshape(N, -1, d).transpose(1, 2) @ base, None, None


def affine_grid(theta, size, align_corners=None):
    """δ twin of ``torch.nn.functional.affine_grid``."""
    op = "affine_grid"
    check_tensor(op, "theta", theta)
    check(theta.is_floating_point(), op, f"theta must be floating point, got {theta.dtype}")
    size = list(size)
    if len(size) == 4:
        check(theta.dim() == 3 and tuple(theta.shape[1:]) == (2, 3), op,
              f"expected a theta of shape (N, 2, 3) for a 2-D size, got {list(theta.shape)}")
    else:
        check(len(size) == 5 and theta.dim() == 3 and tuple(theta.shape[1:]) == (3, 4), op,
              f"expected a size of 4 or 5 entries and theta (N, 2, 3) or (N, 3, 4), got {size} and "
              f"{list(theta.shape)}")
    check(theta.shape[0] == size[0], op, f"theta has {theta.shape[0]} matrices for a batch of {size[0]}")
    return AffineGrid.apply(theta, size, bool(align_corners))


def _unnormalize(g, L, align_corners):
    """Pixel coordinate of a normalized coordinate, and its slope."""
    if align_corners:
        return (g + 1) / 2 * (L - 1), (L - 1) / 2
    return ((g + 1) * L - 1) / 2, L / 2


def _reflect(i, L, align_corners):
    """i reflected into the input (about the outer pixels' centres with align_corners, their edges without),
    and d(reflected)/d(i) = ±1."""
    lo, hi = (0, 2 * (L - 1)) if align_corners else (-1, 2 * L - 1)
    if lo == hi:
        return torch.zeros_like(i), torch.zeros_like(i)
    m, span = lo / 2, (hi - lo) / 2
    d = i - m
    sign = torch.where(d < 0, -torch.ones_like(i), torch.ones_like(i))
    d = d.abs()
    extra, flips = torch.fmod(d, span), torch.floor(d / span)
    even = torch.remainder(flips, 2) == 0
    return torch.where(even, extra + m, span - extra + m), torch.where(even, sign, -sign)


def _clip(i, s, L):
    """i clipped to [0, L − 1]; the slope s zeroed where clipped (at the bounds included, as native)."""
    return i.clamp(0, L - 1), torch.where((i > 0) & (i < L - 1), s, torch.zeros_like(s))


def _coords(grid, H, W, align_corners, padding_mode):
    """(ix, iy) in pixels and their slopes d(ix)/dx, d(iy)/dy (border / reflection: native's clipping and
    reflections, with their slopes)."""
    ix, sx = _unnormalize(grid[..., 0], W, align_corners)
    iy, sy = _unnormalize(grid[..., 1], H, align_corners)
    sx, sy = torch.full_like(ix, sx), torch.full_like(iy, sy)
    if padding_mode == "reflection":
        (ix, rx), (iy, ry) = _reflect(ix, W, align_corners), _reflect(iy, H, align_corners)
        sx, sy = sx * rx, sy * ry
    if padding_mode in ("border", "reflection"):
        (ix, sx), (iy, sy) = _clip(ix, sx, W), _clip(iy, sy, H)
    return ix, iy, sx, sy


def _corner(x_flat, cx, cy, H, W):
    """(input at integer corner (cx, cy) for every output point, zero outside; its flat index; in-bounds mask)."""
    inside = (cx >= 0) & (cx <= W - 1) & (cy >= 0) & (cy <= H - 1)
    idx = (cy.clamp(0, H - 1) * W + cx.clamp(0, W - 1)).long().reshape(cx.shape[0], 1, -1)
    idx = idx.expand(-1, x_flat.shape[1], -1)
    m = inside.reshape(cx.shape[0], 1, -1).to(x_flat.dtype)
    return x_flat.gather(2, idx) * m, idx, m


class GridSample(DeltaFunction):
    """out[n, c, p] = Σ_corners w_corner(p) · a[n, c, corner]  (bilinear: the four pixels around (ix, iy) with
    w = (1 − |ix − cx|)(1 − |iy − cy|); nearest: the nearest pixel with w = 1; pixels outside read 0).

    backward: δ_a[n, c, corner] += δ[n, c, p] · w_corner(p);
    bilinear:  δ_ix = Σ_c δ · ((a_x1y0 − a_x0y0)(1 − fy) + (a_x1y1 − a_x0y1) fy),  δ_iy likewise,
    δ_grid = (δ_ix · dix/dx, δ_iy · diy/dy)  (the unnormalization's slope, times ±1 per reflection, 0 where clipped);
    nearest: δ_grid = 0.
    """

    @staticmethod
    def forward(x, grid, mode, padding_mode, align_corners):
        return F.grid_sample(x, grid, mode, padding_mode, align_corners)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, grid, ctx.mode, ctx.padding_mode, ctx.align_corners = inputs
        ctx.save_for_backward(x, grid)

    @staticmethod
    def backward(ctx, delta):
        x, grid = ctx.saved_tensors
        N, C, H, W = x.shape
        xf, d = x.reshape(N, C, H * W), delta.reshape(N, C, -1)
        ix, iy, sx, sy = _coords(grid, H, W, ctx.align_corners, ctx.padding_mode)
        gx = torch.zeros_like(xf) if ctx.needs_input_grad[0] else None
        if ctx.mode == "nearest":
            _, idx, m = _corner(xf, torch.round(ix), torch.round(iy), H, W)
            if gx is not None:
                gx = gx.scatter_add(2, idx, d * m)
            return (gx.reshape(x.shape) if gx is not None else None,
                    torch.zeros_like(grid) if ctx.needs_input_grad[1] else None, None, None, None)
        x0, y0 = ix.floor(), iy.floor()
        fx, fy = (ix - x0).reshape(N, 1, -1), (iy - y0).reshape(N, 1, -1)
        v = {}
        for dx in (0, 1):
            for dy in (0, 1):
                val, idx, m = _corner(xf, x0 + dx, y0 + dy, H, W)
                v[dx, dy] = val
                if gx is not None:
                    w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                    gx = gx.scatter_add(2, idx, d * w * m)
        ggrid = None
        if ctx.needs_input_grad[1]:
            dix = (d * ((v[1, 0] - v[0, 0]) * (1 - fy) + (v[1, 1] - v[0, 1]) * fy)).sum(1)
            diy = (d * ((v[0, 1] - v[0, 0]) * (1 - fx) + (v[1, 1] - v[1, 0]) * fx)).sum(1)
            ggrid = torch.stack([dix.reshape(ix.shape) * sx, diy.reshape(iy.shape) * sy], -1)
        return (gx.reshape(x.shape) if gx is not None else None), ggrid, None, None, None


def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
    """δ twin of ``torch.nn.functional.grid_sample`` (4-D input; bilinear / nearest with zeros, border or
    reflection padding; the other modes run native grid_sample)."""
    op = "grid_sample"
    check_tensor(op, "input", input)
    check_tensor(op, "grid", grid)
    if input.dim() != 4 or mode not in ("bilinear", "nearest") or \
            padding_mode not in ("zeros", "border", "reflection"):
        return F.grid_sample(input, grid, mode, padding_mode, align_corners)
    check(grid.dim() == 4 and grid.shape[-1] == 2 and grid.shape[0] == input.shape[0], op,
          f"expected grid of shape (N, H_out, W_out, 2) for input {list(input.shape)}, got {list(grid.shape)}")
    return GridSample.apply(input, grid, mode, padding_mode, bool(align_corners))


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.affine_grid: affine_grid, F.grid_sample: grid_sample}
__all__ = ["affine_grid", "grid_sample"]
