#!/usr/bin/env python
"""Where a training step's time goes, native autograd beside torchbp's δ layers: torch.profiler's top
operators for one bench model (scripts/bench.py's models and step), sorted by device time on CUDA
and by CPU time on the CPU.

  python scripts/profile_step.py [--model mlp-wide] [--device cuda] [--dtype bfloat16] [--steps 5] [--top 15]

``--audit default|auto|oracle`` profiles ``torchbp.audit`` on the model instead (default: float64
throughout; auto / oracle: float32 with ``oracle="auto"`` / ``"always"``): the time of each of its phases
(the passes, judging, localization) in native training steps, torch.profiler's top operators, and
cProfile's top Python functions by their own time (where per-row Python work shows).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the models, losses and step of the benchmark, defined once)

import torchbp  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp-wide", choices=bench.MODELS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="the bench's small variant of the model")
    p.add_argument("--audit", choices=tuple(AUDITS), default=None,
                   help="profile torchbp.audit in this configuration instead of the training steps")
    args = p.parse_args(argv)
    model, x, y, native_loss, loss_name = bench.build(args.model, args.quick)
    model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
    if args.audit:
        return profile_audit(model, x, y, native_loss, args)
    manual = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchbp.swap(manual)
    manual_loss = bench.twin_loss(loss_name, native_loss) or native_loss
    amp = args.dtype == "bfloat16"
    cuda = args.device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "cuda_time_total" if cuda else "cpu_time_total"
    if cuda and hasattr(torch.autograd.profiler_util.FunctionEvent, "device_time_total"):
        key = "device_time_total"
    for side, m, loss in (("native", model, native_loss), ("δ", manual, manual_loss)):
        step = bench.make_step(m, loss, x, y, amp)
        for _ in range(3):
            step()
        bench.sync(args.device.split(":")[0])
        with profile(activities=acts) as prof:
            for _ in range(args.steps):
                step()
            bench.sync(args.device.split(":")[0])
        print(f"== {side}: {args.model} on {args.device}, {args.dtype}, {args.steps} steps")
        print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=60))
    return 0


AUDITS = {"default": {}, "auto": dict(dtype=torch.float32, oracle="auto"),
          "oracle": dict(dtype=torch.float32, oracle="always")}
# the audit's phases (torchbp.checker.runner's functions) and its per-gradient work
PHASES = ("_working_reference", "_oracle_pass", "_reference_pass", "_subject_pass", "_as_trained_pass",
          "_against_oracle", "build_rows", "isolated_check")


def profile_audit(model, x, y, loss_fn, args) -> int:
    """Where an audit's time goes, in native training steps of the same model (one process)."""
    import cProfile
    import pstats
    import time
    from collections import defaultdict

    from torchbp.checker import judging, runner
    device = args.device.split(":")[0]
    kw = AUDITS[args.audit]
    step = bench.make_step(model, loss_fn, x, y, False)
    for _ in range(3):
        step()
    native = min(bench.timed(step, 3, device) for _ in range(3))
    spent = defaultdict(float)

    def timed_phase(name, fn):
        def run(*a, **k):
            bench.sync(device)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                bench.sync(device)
                spent[name] += time.perf_counter() - t
        return run

    originals = {n: getattr(runner, n) for n in PHASES if hasattr(runner, n)}
    originals_judge = judging.Judge._judge
    try:
        for n, fn in originals.items():
            setattr(runner, n, timed_phase(n, fn))
        judging.Judge._judge = timed_phase("judging (inside the passes)", originals_judge)
        torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)  # warm-up
        spent.clear()
        t = time.perf_counter()
        report = torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
        total = time.perf_counter() - t
    finally:
        for n, fn in originals.items():
            setattr(runner, n, fn)
        judging.Judge._judge = originals_judge
    print(f"== audit ({args.audit}) of {args.model} on {args.device}: {total * 1e3:.1f} ms = "
          f"{total / native:.1f} native steps of {native * 1e3:.2f} ms; {len(report.rows)} rows; "
          f"as trained: {report.environment.get('as_trained')}; oracle: {report.environment.get('oracle')}")
    for n, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {n:32s} {v * 1e3:9.1f} ms  {v / native:6.2f} steps")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=50))
    pr = cProfile.Profile()
    pr.enable()
    torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
