"""The comparison policy (docs/design.md, "Comparison policy"), in one place: metrics, floors, verdicts.

Every metric is computed in float64. ``FLOOR`` is what a correct low-precision result may still be off
by; tests/util.py reads it from here.
"""
from __future__ import annotations

import math

import torch

F64_RTOL = 1e-10  # float64 subject vs float64 reference: rel_err <= this
# floor(dtype) of the low-precision rule err(subject, oracle) <= 2 * err(native, oracle) + floor
FLOOR = {torch.float64: F64_RTOL, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}

OK, FAIL, NONFINITE, NATIVE = "ok", "fail", "nonfinite", "native"
NAN = float("nan")


def floor(dtype: torch.dtype) -> float:
    return FLOOR.get(dtype, FLOOR[torch.float32])


def finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    # one reduction, NaN-propagating (torch.isfinite(...).all() is several times slower on CPU)
    return bool(torch.isfinite(t.detach().abs().amax()))


_CHUNK = 1 << 15  # elements per step: float64 temporaries stay small (memory; fresh buffers page-fault)


def metrics(s: torch.Tensor, r: torch.Tensor, ref_norm: float | None = None) -> dict:
    """``max_abs_err``, ``rel_err`` = ‖s − r‖/‖r‖ (‖s − r‖ when r is 0), ``cosine``, and the norms
    ``norm`` (‖s‖) and ``ref_norm`` (‖r‖; pass it when known), all in float64; the errors are NaN
    when either side holds a non-finite value or the shapes differ. It runs on every gradient, so it
    works through the data in chunks, in float64, without full-size temporaries."""
    if s.shape != r.shape:
        return {"max_abs_err": NAN, "rel_err": NAN, "cosine": NAN, "norm": NAN, "ref_norm": NAN}
    if s.numel() == 0:
        return {"max_abs_err": 0.0, "rel_err": 0.0, "cosine": 1.0, "norm": 0.0, "ref_norm": 0.0}
    s, r = s.detach().reshape(-1), r.detach().reshape(-1).to(s.device)
    if s.numel() <= _CHUNK:  # most gradients: one stacked reduction, one read back to the host
        ns, nr_, nd, dmax, dmin = _norms(s, r).tolist()
    else:
        ns, nr_, nd, dmax, dmin = _chunked_norms(s, r).tolist()
    max_abs = max(dmax, -dmin)
    nr = ref_norm if ref_norm is not None else nr_
    if math.isnan(ns) or math.isnan(nr_) or not (math.isfinite(ns) or finite(s)) or not (math.isfinite(nr_) or finite(r)):
        return {"max_abs_err": NAN, "rel_err": NAN, "cosine": NAN, "norm": ns, "ref_norm": nr}
    # (an infinite norm of finite values is overflow of |values| > 1e154 only)
    rel = nd / nr if nr > 0 else nd
    if ns > 0 and nr > 0:  # cos = s·r/(‖s‖‖r‖) from ‖s − r‖², without cancellation near 1
        cos = 1.0 - (nd - (ns - nr)) * (nd + (ns - nr)) / (2 * ns * nr)
    else:
        cos = 1.0 if ns == nr else 0.0
    return {"max_abs_err": max_abs, "rel_err": rel, "cosine": cos, "norm": ns, "ref_norm": nr}


def _norms(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """[‖s‖, ‖r‖, ‖s − r‖, max(s − r), min(s − r)] of two flat tensors, in float64, as one tensor
    (max|s − r| from the extremes: one aminmax is several times faster than the ∞-norm on CPU)."""
    a, b = s.to(torch.float64), r.to(torch.float64)
    d = a - b
    return torch.stack([*torch._foreach_norm([a, b, d]), *reversed(torch.aminmax(d))])


def _chunked_norms(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``_norms`` of long flat tensors, a chunk at a time through two float64 buffers reused for every
    chunk (no full-size temporaries, no fresh allocation per chunk)."""
    n, step = s.numel(), _CHUNK
    if s.dtype == r.dtype == torch.float64:
        return _chunked_norms_float64(s, r)
    a64 = torch.empty(min(n, step), dtype=torch.float64, device=s.device)
    b64 = torch.empty_like(a64)
    parts = []  # per chunk: ‖s‖, ‖r‖, ‖s − r‖, max(s − r), min(s − r)
    for start in range(0, n, step):
        m = min(step, n - start)
        a, b = a64[:m], b64[:m]
        a.copy_(s[start:start + m])
        b.copy_(r[start:start + m])
        na, nb = torch._foreach_norm([a, b])
        d = torch.sub(a, b, out=b)
        parts.append(torch.stack([na, nb, torch.linalg.vector_norm(d), *reversed(torch.aminmax(d))]))
    p = torch.stack(parts)
    return torch.cat([torch.linalg.vector_norm(p[:, :3], dim=0), p[:, 3].amax().reshape(1), p[:, 4].amin().reshape(1)])


def _chunked_norms_float64(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``_chunked_norms`` of two float64 tensors: their norms straight from the data (no copy needed), only
    the difference a chunk at a time through one reused buffer."""
    n, step = s.numel(), _CHUNK
    d64 = torch.empty(min(n, step), dtype=torch.float64, device=s.device)
    parts = []  # per chunk: ‖s − r‖, max(s − r), min(s − r)
    for start in range(0, n, step):
        m = min(step, n - start)
        d = torch.sub(s[start:start + m], r[start:start + m], out=d64[:m])
        parts.append(torch.stack([torch.linalg.vector_norm(d), *reversed(torch.aminmax(d))]))
    p = torch.stack(parts)
    return torch.stack([*torch._foreach_norm([s, r]), torch.linalg.vector_norm(p[:, 0]), p[:, 1].amax(), p[:, 2].amin()])


def norm(t: torch.Tensor) -> float:
    return float(t.detach().to(torch.float64).norm()) if t.numel() else 0.0


def scale_factor(ref_norm: float, scale: float | None) -> float:
    """How much to widen the floor for a gradient much smaller than the δ it was computed from.

    A gradient that cancels to ~0 (a bias before BatchNorm, ∑ of δ over the batch) holds only rounding
    noise, so its *relative* error is meaningless; its error is judged against ``scale`` (the norm of
    the δ arriving at the same layer) instead: tolerance × max(1, scale / ‖r‖)."""
    if not scale or not math.isfinite(scale):
        return 1.0
    return max(1.0, scale / ref_norm) if ref_norm > 0 else max(1.0, scale)


def judge(rel_err: float, dtype: torch.dtype, native_rel_err: float | None = None,
          factor: float = 1.0) -> tuple[float, str]:
    """(tolerance, status) for one quantity. float64: rel_err <= 1e-10. Lower precision, where
    ``rel_err`` and ``native_rel_err`` are both measured against the float64 oracle:
    rel_err <= 2 * native_rel_err + floor(dtype). ``factor`` (see scale_factor) widens the floor."""
    if dtype == torch.float64 or native_rel_err is None:
        tol = (F64_RTOL if dtype == torch.float64 else floor(dtype)) * factor
    else:
        if math.isnan(native_rel_err):
            return NAN, NONFINITE
        tol = 2 * native_rel_err + floor(dtype) * factor
    if math.isnan(rel_err):
        return tol, NONFINITE
    return tol, OK if rel_err <= tol else FAIL


__all__ = ["F64_RTOL", "FLOOR", "floor", "scale_factor", "metrics", "norm", "judge", "finite",
           "OK", "FAIL", "NONFINITE", "NATIVE"]
