"""What one call costs under ``torchbp.manual_backward()``: cheap ops on a small tensor timed alone, under an
empty TorchFunctionMode (the floor any mode pays) and under the routing, in µs per call (best of five runs).

Structure ops (views, shape queries, casts) should cost what the empty mode costs; routed ops cost their δ
Function (its apply, its backward node's creation and release).

  python scripts/route_overhead.py [--threads 1] [--calls 20000]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.overrides import TorchFunctionMode

import torchbp


class Empty(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def per_call(fn, calls: int) -> float:
    for _ in range(min(calls, 200)):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e6


def cases():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    c = torch.randn(4, 8)
    return {
        "x.shape (structure)": lambda: x.shape,
        "x.view(32) (structure)": lambda: x.view(32),
        "x.transpose(0, 1) (structure)": lambda: x.transpose(0, 1),
        "c + c (no gradient: native)": lambda: c + c,
        "x * x (routed)": lambda: x * x,
        "x + 1 (routed)": lambda: x + 1,
        "x.sum() (routed)": lambda: x.sum(),
        "x.mean(-1) (routed)": lambda: x.mean(-1),
        "torch.softmax(x, -1) (routed)": lambda: torch.softmax(x, -1),
        "F.linear(x, w) (routed)": lambda: torch.nn.functional.linear(x, w),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--calls", type=int, default=20000, help="calls per timed run (default 20000)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'call':32s} {'alone':>8s} {'empty':>8s} {'routed':>8s}   µs per call")
    for name, fn in cases().items():
        alone = per_call(fn, args.calls)
        with Empty():
            empty = per_call(fn, args.calls)
        with torchbp.manual_backward():
            routed = per_call(fn, args.calls)
        print(f"{name:32s} {alone:8.2f} {empty:8.2f} {routed:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
