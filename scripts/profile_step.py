#!/usr/bin/env python
"""Where a training step's time goes, native autograd beside torchbp's δ layers: torch.profiler's top
operators for one bench model (scripts/bench.py's models and step), sorted by device time on CUDA
and by CPU time on the CPU.

  python scripts/profile_step.py [--model mlp-wide] [--device cuda] [--dtype bfloat16] [--steps 5] [--top 15]

``--audit default|auto|oracle`` profiles ``torchbp.audit`` on the model instead (default: float64
throughout; auto / oracle: float32 with ``oracle="auto"`` / ``"always"``): the time of each of its phases
(the passes, judging, localization) in native training steps, torch.profiler's top operators, and
cProfile's top Python functions by their own time (where per-row Python work shows). On the CPU the
phases are timed in the process's CPU time too (a shared machine's wall time mostly measures the other
processes), and the live memory at each phase's end and its peak inside (the bench's allocation count,
in native steps' peaks) says where the audit's peak memory comes from.
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
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
    native_cpu = min(_cpu_time(step) for _ in range(3))
    spent, spent_cpu = defaultdict(float), defaultdict(float)

    def timed_phase(name, fn):
        def run(*a, **k):
            bench.sync(device)
            t, c = time.perf_counter(), time.process_time()
            try:
                with torch.profiler.record_function("audit phase: " + name):
                    return fn(*a, **k)
            finally:
                bench.sync(device)
                spent[name] += time.perf_counter() - t
                spent_cpu[name] += time.process_time() - c
        return run

    originals = {n: getattr(runner, n) for n in PHASES if hasattr(runner, n)}
    originals_judge = judging.Judge._judge
    try:
        for n, fn in originals.items():
            setattr(runner, n, timed_phase(n, fn))
        judging.Judge._judge = timed_phase("judging (inside the passes)", originals_judge)
        torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)  # warm-up
        spent.clear()
        spent_cpu.clear()
        t, c = time.perf_counter(), time.process_time()
        report = torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)
        total, total_cpu = time.perf_counter() - t, time.process_time() - c
        wall, cpu_time = dict(spent), dict(spent_cpu)  # (the memory's run below adds to ``spent``)
        memory = _phase_memory(step, lambda: torchbp.audit(model, x, y, loss_fn=loss_fn, **kw)) \
            if device == "cpu" else None
    finally:
        for n, fn in originals.items():
            setattr(runner, n, fn)
        judging.Judge._judge = originals_judge
    print(f"== audit ({args.audit}) of {args.model} on {args.device}: {total * 1e3:.1f} ms = "
          f"{total / native:.1f} native steps of {native * 1e3:.2f} ms; {len(report.rows)} rows; "
          f"as trained: {report.environment.get('as_trained')}; oracle: {report.environment.get('oracle')}")
    if device == "cpu":
        print(f"   CPU time: {total_cpu * 1e3:.1f} ms = {total_cpu / native_cpu:.1f} native steps of "
              f"{native_cpu * 1e3:.2f} ms")
    for n, v in sorted(wall.items(), key=lambda kv: -kv[1]):
        cpu = f"   CPU {cpu_time[n] * 1e3:9.1f} ms  {cpu_time[n] / native_cpu:6.2f} steps" if device == "cpu" else ""
        print(f"  {n:32s} {v * 1e3:9.1f} ms  {v / native:6.2f} steps{cpu}")
    if memory is not None:
        native_peak, peak, phases = memory
        print(f"== memory: audit peak {peak / 2**20:.1f} MiB = {peak / native_peak:.2f} native steps' peaks of "
              f"{native_peak / 2**20:.1f} MiB; live at each phase's end (what it keeps) and its own peak:")
        for name, end_live, phase_peak in phases:
            print(f"  {name:32s} live after {end_live / 2**20:8.1f} MiB   peak inside {phase_peak / 2**20:8.1f} MiB"
                  f"  ({phase_peak / native_peak:.2f}×)")
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


def _cpu_time(step) -> float:
    import time
    c = time.process_time()
    step()
    return time.process_time() - c


def _phase_memory(step, run):
    """(native step's peak, the audit's peak, [(phase, live bytes at its end, peak bytes inside it)]), all
    above what was live before, from the CPU allocator's events as the bench counts them (bench.peak_of)."""
    import gc

    from torch._C._profiler import _EventType
    native_peak = bench.peak_memory(step, "cpu")
    step.opt.zero_grad(set_to_none=True)
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    allocs, spans = [], []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            allocs.append((node.start_time_ns, node.typed[1].alloc_size))
        elif node.name.startswith("audit phase: "):
            spans.append((node.start_time_ns, node.end_time_ns, node.name[len("audit phase: "):]))
        stack.extend(node.children)
    allocs.sort()
    spans = [s for s in sorted(spans) if not any(o[0] < s[0] and s[1] <= o[1] for o in spans)]  # outermost
    live = peak = 0
    phases, i = [], 0
    for start, end, name in spans:
        for t, size in allocs[i:]:
            if t >= start:
                break
            live += size
            peak = max(peak, live)
            i += 1
        inside = live
        for t, size in allocs[i:]:
            if t > end:
                break
            live += size
            inside = max(inside, live)
            i += 1
        peak = max(peak, inside)
        phases.append((name, live, inside))
    for _, size in allocs[i:]:
        live += size
        peak = max(peak, live)
    return native_peak, peak, phases


if __name__ == "__main__":
    sys.exit(main())
