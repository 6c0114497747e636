"""Batch normalization over the batch of every process of a group (nn.SyncBatchNorm under DDP).

The statistics and the δ sums are the batch norm's, taken over the global batch: each sum over the local batch
is all-reduced (summed over the processes) before it is used. One process, or no process group: plain
``batch_norm`` (what native SyncBatchNorm falls back to).
"""
from __future__ import annotations

import torch

from ._common import DeltaFunction, check


def _all_sum(t, group):
    import torch.distributed as dist
    dist.all_reduce(t, dist.ReduceOp.SUM, group=group)
    return t


class SyncBatchNorm(DeltaFunction):
    """z = γ ⊙ x̂ + β,  x̂ = (x − μ) r,  r = 1/√(σ² + eps), with μ = Σ_all x / N and σ² = Σ_all (x − μ)² / N per
    channel, Σ_all a sum over the batch and spatial dims of every process, N the global count.

    backward (the batch norm's, with global sums):  δ_x = γ r ⊙ (δ − Σ_all δ / N − x̂ ⊙ Σ_all(δ ⊙ x̂) / N);
    ∂J/∂γ = Σ δ ⊙ x̂,  ∂J/∂β = Σ δ over this process's batch (DDP then reduces them as any gradient).
    Running statistics, as native: (1 − m)·running + m·(μ, σ²·N/(N − 1)).
    """

    @staticmethod
    def forward(x, w, b, rm, rv, eps, momentum, group):
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        opmath = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xo = x.to(opmath)
        n = torch.tensor([x.numel() // C], dtype=opmath, device=x.device)
        first = _all_sum(torch.cat([xo.sum(dims), n]), group)  # [Σ_all x | N]
        N = first[C]
        mean = first[:C] / N
        shape = [1, C] + [1] * (x.dim() - 2)
        xc = xo - mean.view(shape)
        var = _all_sum(xc.square().sum(dims), group) / N  # two passes: Σ(x − μ)² with the global μ
        invstd = (var + eps).rsqrt()
        y = xc * invstd.view(shape)
        if w is not None:
            y = y * w.to(opmath).view(shape)
        if b is not None:
            y = y + b.to(opmath).view(shape)
        if rm is not None:
            with torch.no_grad():
                rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
                rv.mul_(1 - momentum).add_((var * N / (N - 1)).to(rv.dtype), alpha=momentum)
        return y.to(x.dtype), mean, invstd, N

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, rm, rv, eps, momentum, ctx.group = inputs
        _, mean, invstd, N = output
        ctx.mark_non_differentiable(mean, invstd, N)
        ctx.save_for_backward(x, w, mean, invstd, N)
        ctx.b_dtype = None if b is None else b.dtype

    @staticmethod
    def backward(ctx, delta, _dm, _di, _dn):
        check(not torch.is_grad_enabled(), "sync_batch_norm",
              "double backward is not supported across processes (the δ sums are all-reduced)")
        x, w, mean, invstd, N = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, C] + [1] * (x.dim() - 2)
        opmath = mean.dtype
        d = delta.to(opmath)
        xh = (x.to(opmath) - mean.view(shape)) * invstd.view(shape)
        g1, g2 = d.sum(dims), (d * xh).sum(dims)  # Σ δ, Σ δ ⊙ x̂ over this process's batch
        gw = g2.to(w.dtype) if need_w else None
        gb = g1.to(ctx.b_dtype) if need_b else None
        gx = None
        if need_x:
            G = _all_sum(torch.cat([g1, g2]), ctx.group) / N
            scale = invstd if w is None else invstd * w.to(opmath)
            gx = ((d - G[:C].view(shape) - xh * G[C:].view(shape)) * scale.view(shape)).to(x.dtype)
        return gx, gw, gb, None, None, None, None, None


def sync_batch_norm(input, weight, bias, running_mean, running_var, eps, momentum, process_group):
    """Training-mode batch norm over the global batch of ``process_group`` (torch.distributed); its statistics
    and δ sums all-reduced. (native's ``sync_batch_norm.apply`` runs on GPUs only; this runs wherever the
    group's backend does, gloo on the CPU included.)"""
    op = "sync_batch_norm"
    check(input.dim() >= 2, op, f"expected at least 2-D input, got shape {list(input.shape)}")
    check(input.is_floating_point(), op, f"input must be floating point, got {input.dtype}")
    return SyncBatchNorm.apply(input, weight, bias, running_mean, running_var, float(eps), float(momentum),
                               process_group)[0]


ROUTES = {}  # native's sync path is a module method, not a function: the twin calls sync_batch_norm
__all__ = ["sync_batch_norm"]
