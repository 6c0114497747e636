#!/usr/bin/env python
"""Where a training step's time goes, native autograd beside torchbp's δ layers: torch.profiler's top
operators for one bench model (scripts/bench.py's models and step), sorted by device time on CUDA
and by CPU time on the CPU.

  python scripts/profile_step.py [--model mlp-wide] [--device cuda] [--dtype bfloat16] [--steps 5] [--top 15]
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
    args = p.parse_args(argv)
    model, x, y, native_loss, loss_name = bench.build(args.model, args.quick)
    model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
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


if __name__ == "__main__":
    sys.exit(main())
