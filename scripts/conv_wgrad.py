#!/usr/bin/env python
"""Formulations of the convolution δ's ∂J/∂W, timed against native autograd's weight gradient.

∂J/∂W = a ⋆ δ (the derivation's δ aᵀ summed over the batch and the output positions) can be computed as
- ``torchbp``: torchbp's conv2d δ as it runs (the form ``fastpath.conv.weight_grad`` picks here);
- ``kernel``: the plain formula, one convolution of a (batch and channels swapped) with δ as the kernel
  (``conv._grad_W``, whole batch, plain layout);
- ``gemm``: the input windows unfolded, then one matrix product over batch × positions, in batch chunks
  (``fastpath.conv.weight_grad_gemm``);
- ``channels_last``: the plain convolution with its kernel channels-last, a vector of samples per chunk;
- ``plain``: the plain convolution in batch chunks.
Each is checked against native (float32: rel err), so a faster form is also a right one. For choosing the
form per device and shape (``fastpath.conv.gemm_form``).

  python scripts/conv_wgrad.py [--device cuda] [--dtypes float32,bfloat16] [--reps 20] [--shapes cnn.conv2]
                               [--forms torchbp,kernel,gemm,channels_last,plain]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from torchbp.functional.conv import _grad_W
from torchbp.functional.fastpath import conv as fc

# (name, a shape, out channels, kernel, stride, padding): the bench CNN's two convs, a ResNet 3×3 and a stem
FORMS = ("torchbp", "kernel", "gemm", "channels_last", "plain")
SHAPES = [("cnn.conv1", (64, 3, 32, 32), 32, 3, 1, 0), ("cnn.conv2", (64, 32, 15, 15), 64, 3, 1, 0),
          ("resnet.3x3", (32, 64, 56, 56), 64, 3, 1, 1), ("resnet.stem", (32, 3, 224, 224), 64, 7, 2, 3)]


def timed(fn, reps, device):
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return 1e3 * statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--forms", default="torchbp,kernel,gemm",
                    help=f"comma-separated, from {', '.join(FORMS)} (default: torchbp,kernel,gemm)")
    ap.add_argument("--shapes", default=",".join(n for n, *_ in SHAPES), help="comma-separated, from the default")
    args = ap.parse_args(argv)
    dev = args.device
    forms_asked = [f for f in FORMS if f in args.forms.split(",")]
    print(f"{'shape':12s} {'dtype':9s} {'native ms':>9s} " + " ".join(f"{n:>16s}" for n in forms_asked)
          + "   (ms, × native, rel err)")
    for name, shape, O, k, s, p in (row for row in SHAPES if row[0] in args.shapes.split(",")):
        for dt in args.dtypes.split(","):
            dtype = getattr(torch, dt)
            g = torch.Generator(device=dev).manual_seed(0)
            a = torch.randn(shape, device=dev, dtype=dtype, generator=g)
            W = torch.randn(O, shape[1], k, k, device=dev, dtype=dtype, generator=g, requires_grad=True)
            delta = torch.randn_like(F.conv2d(a, W.detach(), None, s, p))
            # backward alone: each graph is built once and kept (retain_graph)
            z_native, z_tbp = F.conv2d(a, W, None, s, p), tbf.conv2d(a, W, None, s, p)
            native = lambda: torch.autograd.grad(z_native, W, delta, retain_graph=True)[0]  # noqa: E731
            ref = native().double()
            t_native = timed(native, args.reps, dev)
            conv_args = (s, s), (p, p), (1, 1), 1, (k, k)
            forms = {"torchbp": lambda: torch.autograd.grad(z_tbp, W, delta, retain_graph=True)[0],
                     "kernel": lambda: _grad_W(a, delta, *conv_args)}
            for form in FORMS[2:]:
                forms[form] = lambda form=form: fc.weight_grad(a, delta, *conv_args, _grad_W, None, form)
            cells = []
            for fn in (forms[f] for f in forms_asked):
                try:
                    err = ((fn().double() - ref).norm() / ref.norm()).item()
                    t = timed(fn, args.reps, dev)
                    cells.append(f"{t:7.3f} {t / t_native:4.1f}x {err:.0e}")
                except RuntimeError as e:  # e.g. out of memory for the unfolded windows
                    cells.append(f"{'failed: ' + str(e).splitlines()[0][:8]:>16s}")
            print(f"{name:12s} {dt:9s} {t_native:9.3f} " + " ".join(f"{c:>16s}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
