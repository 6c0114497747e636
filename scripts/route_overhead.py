"""What one call costs under ``torchbp.manual_backward()``: cheap ops on a small tensor timed alone, under an
empty TorchFunctionMode (the floor any mode pays) and under the routing, in µs per call (best of five runs).

Structure ops (views, shape queries, casts) should cost what the empty mode costs; routed ops cost their δ
Function (its apply, its backward node's creation and release).

``--backward``: a routed op's forward and backward per call, beside native's and beside a bare
``torch.autograd.Function`` doing native's work with its backward in Python, called through torch's C-level
apply (torch's own cost of a Python Function: the floor of any op whose backward is a formula written in
Python, torchbp's or anyone's).

``--model bert-tiny`` (any model of scripts/bench.py): one training step's calls under the routing, counted
(routed calls by δ Function, calls passed through), and what they cost at the per-call prices measured here:
the share of the step that routing's per-call work takes, and the share no Python formula can avoid.

  python scripts/route_overhead.py [--threads 1] [--calls 20000] [--backward] [--model llama-tiny]
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import time
import warnings

import torch
from torch.overrides import TorchFunctionMode

import torchbp


class Empty(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def per_call(fn, calls: int) -> float:
    """µs per call of ``fn``, best of five runs, in this thread's CPU time (other processes on a shared
    host take wall time, not this thread's)."""
    for _ in range(min(calls, 200)):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - t) / calls)
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


class _BareMul(torch.autograd.Function):
    """x ⊙ y with its backward in Python: torch's cost of a Python Function, nothing of torchbp's."""

    @staticmethod
    def forward(x, y):
        return x * y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y, g * x


def backward_costs(calls: int) -> dict:
    """µs per forward + backward of ``x * y`` (4×8): native, a bare Python Function, routed."""
    bare = super(torch.autograd.Function, _BareMul).apply  # torch._C._FunctionBase.apply: no argument binding
    x, y = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    g = torch.ones(4, 8)
    mode = torchbp.manual_backward()

    def routed():
        with mode:
            out = x * y
        torch.autograd.backward(out, g)

    def block():  # the block's own entry and exit, paid once per step: timed apart
        with mode:
            pass

    empty = per_call(lambda: None, calls)  # the loop itself
    enter = per_call(block, max(1, calls // 10))
    runs = {"native": lambda: torch.autograd.backward(x * y, g),
            "bare Function": lambda: torch.autograd.backward(bare(x, y), g), "routed": routed}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(5):  # the three taken in turn, so that a busy moment of a shared host falls on all of them
        for k, fn in runs.items():
            best[k] = min(best[k], per_call(fn, max(1, calls // 5)))
    return {"native": best["native"] - empty, "bare Function": best["bare Function"] - empty,
            "routed": best["routed"] - empty - enter}


def step_calls(model_name: str):
    """Calls one training step of a bench model makes under the routing: routed ones by the δ Function they
    build, and the number passed through (structure ops, shape queries, calls without a graph)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench
    from torchbp import intercept

    model, x, y, native_loss, loss_name = bench.build(model_name, False)
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchbp.swap(model)
    loss_fn = bench.twin_loss(loss_name, native_loss) or native_loss
    passed = collections.Counter()

    class Counting(intercept._Router):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = super().__torch_function__(func, types, args, kwargs)
            node = getattr(out, "grad_fn", None) if isinstance(out, torch.Tensor) else None
            routed = intercept._routes.get(func) is not None and intercept._grad_enabled() \
                and intercept._needs_grad(args, kwargs if kwargs else {})
            passed["routed" if routed else "passed"] += 1
            if routed and node is not None:
                passed["routed:" + type(node).__name__] += 1
            return out

    with Counting():
        loss = loss_fn(model(x), y)
    loss.backward()
    step = bench.make_step(model, loss_fn, x, y, False)
    nstep = bench.make_step(bench.build(model_name, False)[0], native_loss, x, y, False)
    for _ in range(2):
        step(), nstep()
    native_ms = min(per_call(nstep, 3) for _ in range(3)) / 1e3
    return passed, native_ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--calls", type=int, default=20000, help="calls per timed run (default 20000)")
    p.add_argument("--backward", action="store_true", help="also forward + backward per call, beside a bare "
                   "Python Function's")
    p.add_argument("--model", default=None, help="a scripts/bench.py model: its step's calls and their cost")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'call':32s} {'alone':>8s} {'empty':>8s} {'routed':>8s}   µs per call")
    prices = {}
    for name, fn in cases().items():
        alone = per_call(fn, args.calls)
        with Empty():
            empty = per_call(fn, args.calls)
        with torchbp.manual_backward():
            routed = per_call(fn, args.calls)
        prices[name] = (alone, empty, routed)
        print(f"{name:32s} {alone:8.2f} {empty:8.2f} {routed:8.2f}")
    if not (args.backward or args.model):
        return 0
    fb = backward_costs(args.calls // 4)
    print("\nforward + backward of x * y (4×8), µs per call: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fb.items()))
    if not args.model:
        return 0
    counts, native_ms = step_calls(args.model)
    mode_price = prices["x.view(32) (structure)"][2] - prices["x.view(32) (structure)"][0]
    routed_price, floor_price = fb["routed"] - fb["native"], fb["bare Function"] - fb["native"]
    n_routed, n_passed = counts["routed"], counts["passed"]
    print(f"\n{args.model}: one step, {native_ms:.1f} ms native (this thread's CPU time)")
    print(f"  {n_passed} calls passed through, {n_routed} routed: "
          + ", ".join(f"{k[7:]} {v}" for k, v in sorted(counts.items()) if k.startswith("routed:")))
    cost = n_passed * mode_price + n_routed * routed_price
    floor = n_routed * floor_price
    print(f"  at these prices: passing through {n_passed * mode_price / 1e3:.2f} ms, routed calls "
          f"{n_routed * routed_price / 1e3:.2f} ms (forward + backward, over native's): "
          f"{cost / 1e3 / native_ms:.3f} of the native step; of which a bare Python Function's floor "
          f"{floor / 1e3:.2f} ms ({floor / 1e3 / native_ms:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
