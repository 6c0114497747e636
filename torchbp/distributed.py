"""torchbp under torch.distributed: audit every rank's replica of a DistributedDataParallel model and
merge the reports on one rank.

Swapping needs nothing special: ``torchbp.swap`` changes module classes in place and keeps every
parameter object, so DDP's gradient hooks (registered on the parameters when it was built) and its
buckets stay valid whether the model is swapped before wrapping or afterwards (``torchbp.swap(ddp)``
swaps ``ddp.module``'s submodules). DDP averages gradients only through ``.backward()``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # (imported lazily at run time: torchbp.audit loads on first use)
    from .checker import AuditReport

__all__ = ["audit", "merge", "local_module", "main"]

_WRAPPERS = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)


def local_module(model: torch.nn.Module) -> torch.nn.Module:
    """The rank's own replica: ``model.module`` for DistributedDataParallel / DataParallel, else ``model``."""
    return model.module if isinstance(model, _WRAPPERS) else model


def merge(reports, ranks=None, *, backend=None, full: bool = False) -> "AuditReport":
    """One report from per-rank reports: every row's layer prefixed ``rank<r>/`` (so ``"rank1/0"``
    weight is the ``weight`` of module ``0`` on rank 1), ``ok`` when every rank is ok,
    ``first_divergence`` that of the lowest failing rank (prefixed the same way), ``coverage`` the
    lowest. The environment is rank ``ranks[0]``'s plus ``world_size``, ``backend``, ``ranks`` and
    ``per_rank`` = {setting: [value on each rank]} for the settings that differ between ranks."""
    from .checker import AuditReport
    ranks = list(range(len(reports))) if ranks is None else list(ranks)
    rows, first = [], None
    for r, rep in zip(ranks, reports):
        for row in rep.rows:
            rows.append(dataclasses.replace(row, layer=f"rank{r}/{row.layer}"))
        if first is None and rep.first_divergence is not None:
            first = f"rank{r}/{rep.first_divergence}"
    envs = [rep.environment for rep in reports]
    keys = dict.fromkeys(k for e in envs for k in e)
    per_rank = {k: [e.get(k) for e in envs] for k in keys if any(e.get(k) != envs[0].get(k) for e in envs)}
    env = {**envs[0], "world_size": len(reports), "backend": backend, "ranks": ranks, "per_rank": per_rank}
    return AuditReport(ok=all(rep.ok for rep in reports), rows=rows, first_divergence=first,
                       coverage=min((rep.coverage for rep in reports), default=0.0), environment=env, full=full)


def _sync_batchnorm_training(model) -> bool:
    return any(isinstance(m, torch.nn.SyncBatchNorm) and m.training for m in model.modules())


def audit(model, inputs, target=None, *, dst: int = 0, group=None, **audit_kwargs) -> "AuditReport | None":
    """Collective ``torchbp.audit``: every rank of ``group`` (default: the whole world) calls it with
    its own local batch; each audits its local replica (``model.module`` for DDP, so the audit's passes
    neither run DDP's forward nor touch its reducer) and rank ``dst`` gets one merged report (see
    :func:`merge`); the other ranks get None, as with ``torch.distributed.gather_object``.

    Call it between training steps (not between a DDP forward and its backward). With NCCL, set each
    rank's device first (``torch.cuda.set_device``): the gather travels through it. A rank whose audit
    raises re-raises its error, and rank ``dst`` raises a RuntimeError naming it, instead of a hang.
    ``**audit_kwargs`` are those of :func:`torchbp.audit` (``against`` may be DDP-wrapped too).
    """
    import torch.distributed as dist

    from .checker import AuditReport
    from .checker import audit as _audit
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torchbp.distributed.audit: no default process group; call "
                           "torch.distributed.init_process_group first (or use torchbp.audit)")
    local = local_module(model)
    if "against" in audit_kwargs and audit_kwargs["against"] is not None:
        audit_kwargs["against"] = local_module(audit_kwargs["against"])
    if audit_kwargs.get("localize", True) and _sync_batchnorm_training(local):
        # SyncBatchNorm runs collectives in forward, and only failing ranks would run the localizing
        # passes: the ranks would wait on each other forever.
        raise ValueError("torchbp.distributed.audit: the model has SyncBatchNorm in training mode; pass "
                         "localize=False (or audit it in eval mode)")
    error = None
    try:
        payload = {"report": _audit(local, inputs, target, **audit_kwargs).to_json(indent=None)}
    except Exception as e:  # still take part in the gather, so that no rank waits for this one
        error, payload = e, {"error": f"{type(e).__name__}: {e}"}
    me, world = dist.get_rank(), dist.get_world_size(group)
    gathered = [None] * world if me == dst else None
    dist.gather_object(payload, gathered, dst=dst, group=group)
    if error is not None:
        raise error
    if me != dst:
        return None
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    failed = [f"rank {r}: {p['error']}" for r, p in zip(ranks, gathered) if "error" in p]
    if failed:
        raise RuntimeError("torchbp.distributed.audit failed on " + "; ".join(failed))
    return merge([AuditReport.from_json(p["report"]) for p in gathered], ranks,
                 backend=str(dist.get_backend(group)), full=audit_kwargs.get("full", False))


def main(argv=None) -> int:
    """``torchrun --nproc-per-node=N -m torchbp.distributed``: on every rank, train a swapped MLP in DDP
    next to a native DDP copy and check their gradients agree, then audit every rank's replica and
    print the merged report on rank 0. Exit status 0 when everything agrees, 1 otherwise."""
    import argparse

    import torch.distributed as dist
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node=N -m torchbp.distributed",
                                description=main.__doc__.split("\n\n")[0])
    p.add_argument("--backend", help="default: nccl when there is a GPU per process, else gloo")
    p.add_argument("--steps", type=int, default=3, help="training steps compared (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the merged report as JSON (rank 0)")
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    # nccl needs a GPU per process: with fewer GPUs than processes the demo runs on the CPU with gloo
    backend = args.backend or ("nccl" if torch.cuda.device_count() >= world else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":  # one GPU per process; the gather of the reports travels through it too
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    own = not dist.is_initialized()
    if own:
        dist.init_process_group(backend)
    try:
        return _compare_and_audit(args, backend, device)
    finally:
        # Shut down in order: the DDP models died with _compare_and_audit's frame; the barrier retires
        # every queued work; then the group goes. Left to interpreter exit, the last DDP's Reducer frees
        # the gloo group while holding the GIL, and the group's destructor joins a worker thread that
        # may still be freeing the gather's work and waits for the GIL: a deadlock seen here (one rank
        # never exits, torchrun waits forever).
        if own:
            try:
                if sys.exc_info()[0] is None:  # after an error the peers may never reach the barrier
                    dist.barrier()
            finally:
                dist.destroy_process_group()


def _compare_and_audit(args, backend, device) -> int:
    """main's work, in a frame of its own so that its DDP models are freed when it returns."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .swap import swap
    rank = dist.get_rank()

    def make():
        torch.manual_seed(0)  # DDP wants the same initial weights everywhere
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                                   torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device, torch.float64)

    ids = [device.index] if device.type == "cuda" else None
    native, ours = DDP(make(), device_ids=ids), DDP(swap(make()), device_ids=ids)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (native, ours)]
    worst = 0.0
    for step in range(args.steps):
        g = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own batch
        x = torch.randn(8, 16, generator=g, dtype=torch.float64).to(device)
        y = torch.randn(8, 4, generator=g, dtype=torch.float64).to(device)
        for m, opt in zip((native, ours), opts):
            opt.zero_grad()
            (0.5 * (y - m(x)).pow(2).sum() / len(x)).backward()  # DDP averages here
        for a, b in zip(ours.parameters(), native.parameters()):
            worst = max(worst, float((a.grad - b.grad).norm() / b.grad.norm()))
        for opt in opts:
            opt.step()
    print(f"rank {rank}: swapped DDP vs native DDP, {args.steps} steps ({backend}, {device}): "
          f"worst gradient rel err {worst:.2e}", flush=True)
    report = audit(ours, x, y)
    if report is None:
        return 0 if worst <= 1e-10 else 1
    print(report, flush=True)
    if args.json:
        report.to_json(args.json)
    return 0 if report.ok and worst <= 1e-10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
