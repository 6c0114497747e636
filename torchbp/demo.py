"""``torchbp demo``: the five-layer network of the derivation, back-propagated three ways.

The derivation is the document the δ formulas follow, "Derivation of the back-propagation algorithm"
(see docs/design.md and the README). Layers j, i, k, q, p as in its Figure 1 (l = n_l−4 … n_l), sizes
4-6-5-4-3, sigmoid units and the cost J = ½‖y − h‖² (mean over the batch). Each layer's δ(l) = ∂J/∂z(l)
and the gradients ∂J/∂W(l) = δ(l+1) a(l)ᵀ, ∂J/∂b(l) = δ(l+1) are computed by

  1. torchbp's δ layers (the model swapped to its twins; each backward is the derivation's formula),
  2. native PyTorch autograd (δ read from the pre-activations with ``retain_grad``),
  3. :mod:`torchbp.reference`, an independent float64 NumPy implementation,

and compared pairwise with the relative error ‖s − r‖ / ‖r‖.
"""
from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

SIZES = (4, 6, 5, 4, 3)  # s_j, s_i, s_k, s_q, s_p
NAMES = ("j", "i", "k", "q", "p")
OFFSETS = ("n_l−4", "n_l−3", "n_l−2", "n_l−1", "n_l")
TOL64 = 1e-10            # docs/design.md: float64 passes at rel err <= 1e-10
FLOOR32 = 1e-5           # lower precision: err vs the float64 oracle <= 2 * native's + floor


def derivation_network(seed: int = 0, dtype=torch.float64) -> torch.nn.Sequential:
    """The derivation's network: Linear + Sigmoid for each of the four weight layers j→i→k→q→p."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for s_in, s_out in zip(SIZES[:-1], SIZES[1:]):
        lin = torch.nn.Linear(s_in, s_out, dtype=dtype)
        with torch.no_grad():  # seeded without touching the global RNG
            bound = 1 / s_in ** 0.5
            lin.weight.uniform_(-bound, bound, generator=g)
            lin.bias.uniform_(-bound, bound, generator=g)
        layers += [lin, torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers)


def _cost(h, y):
    """J = ½‖y − h‖² per example, mean over the batch: torchbp's twin when it exists."""
    import torchbp.nn as tbn
    if hasattr(tbn, "HalfSquaredError"):
        return tbn.HalfSquaredError()(h, y)
    return 0.5 * ((y - h) ** 2).sum(-1).mean()


def _native_cost(h, y):
    return 0.5 * ((y - h) ** 2).sum(-1).mean()


def _backprop_torch(model, x, y, cost):
    """δ at every pre-activation z(l+1) (= each Linear's output) and the parameter gradients."""
    zs = []

    def keep(module, inputs, z):  # returns None: the output is left as it is
        z.retain_grad()
        zs.append(z)

    hooks = [m.register_forward_hook(keep) for m in model if isinstance(m, torch.nn.Linear)]
    try:
        cost(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    return ([z.grad for z in zs], [m.weight.grad for m in lins], [None if m.bias is None else m.bias.grad for m in lins])


def _rel(s, r) -> float:
    s, r = np.asarray(s, np.float64), np.asarray(r, np.float64)
    den = np.linalg.norm(r)
    return float(np.linalg.norm(s - r) / den) if den > 0 else float(np.linalg.norm(s - r))


def compare(seed: int = 0, batch: int = 8, dtype=torch.float64):
    """Run the three computations; returns ``(rows, ok)``, rows ordered as the backward pass runs."""
    import torchbp
    from torchbp import reference

    native = derivation_network(seed, dtype)
    manual = torchbp.swap(copy.deepcopy(native), strict=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, SIZES[0], generator=g, dtype=torch.float64).to(dtype)
    y = torch.rand(batch, SIZES[-1], generator=g, dtype=torch.float64).to(dtype)

    got = {"δ layers": _backprop_torch(manual, x, y, _cost),
           "native": _backprop_torch(native, x, y, _native_cost)}
    ref = reference.backprop(*reference.from_torch(native), x.double().numpy(), y.double().numpy())
    got["NumPy"] = (ref["deltas"], ref["grad_W"], ref["grad_b"])

    def item(who, kind, l):  # kind 0: δ(l+1), 1: ∂J/∂W(l), 2: ∂J/∂b(l)
        v = got[who][kind][l]
        return v.detach().double().numpy() if isinstance(v, torch.Tensor) else v

    rows, ok = [], True
    n = len(SIZES)
    for layer in range(n - 1, -1, -1):          # p, q, k, i, j: the order the backward pass runs
        quantities = []
        if layer > 0:                            # δ(l) lives on layers i … p; j is the input
            quantities.append(("δ", 0, layer - 1))
        if layer < n - 1:                        # W(l), b(l) map layer l to l+1
            quantities += [("∂J/∂W", 1, layer), ("∂J/∂b", 2, layer)]
        for qi, (label, kind, l) in enumerate(quantities):
            d, nat, ref_ = item("δ layers", kind, l), item("native", kind, l), item("NumPy", kind, l)
            e_dn, e_dr, e_nr = _rel(d, nat), _rel(d, ref_), _rel(nat, ref_)
            if dtype == torch.float64:
                good = max(e_dn, e_dr, e_nr) <= TOL64
            else:  # the NumPy float64 result is the oracle
                good = e_dr <= 2 * e_nr + FLOOR32
            good = good and all(np.isfinite(v).all() for v in (d, nat, ref_))
            ok &= good
            name = f"{NAMES[layer]} (l = {OFFSETS[layer]})" if qi == 0 else ""
            rows.append([name, label, "×".join(map(str, d.shape)), f"{e_dn:.1e}", f"{e_dr:.1e}", f"{e_nr:.1e}",
                         "ok" if good else "FAIL"])
    return rows, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchbp demo", usage="torchbp demo [--seed N] [--batch N] [--dtype {float64,float32}]",
        description="The derivation's five-layer network, back-propagated three ways and compared. "
                    "Exit codes: 0 all three agree, 1 they do not, 2 usage error.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data (default 0)")
    parser.add_argument("--batch", type=int, default=8, help="examples in the batch (default 8)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="precision of the two torch computations (default float64)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    dtype = getattr(torch, args.dtype)
    from tabulate import tabulate

    rows, ok = compare(args.seed, args.batch, dtype)
    sizes = "-".join(map(str, SIZES))
    print(f"The derivation's network: layers j-i-k-q-p = {sizes}, sigmoid units, cost J = ½‖y − h‖²\n"
          f"(mean over a batch of {args.batch}, {args.dtype}). δ(l) = ∂J/∂z(l), ∂J/∂W(l) = δ(l+1) a(l)ᵀ and\n"
          "∂J/∂b(l) = δ(l+1), computed three ways: torchbp's δ layers, native autograd, and an\n"
          "independent NumPy reference. Cells: relative error ‖s − r‖ / ‖r‖ between two of them.\n")
    print(tabulate(rows, headers=["layer", "quantity", "shape", "δ vs native", "δ vs NumPy",
                                  "native vs NumPy", "status"], disable_numparse=True,
                   colalign=("left", "left", "left", "right", "right", "right", "left")))
    bad = sum(r[-1] != "ok" for r in rows)
    rule = f"rel err ≤ {TOL64:g}" if dtype == torch.float64 else \
        f"δ layers within 2× native's error vs NumPy + {FLOOR32:g}"
    if ok:
        print(f"\nAll three agree on all {len(rows)} quantities ({rule}):\n"
              "the δ layers back-propagate as the derivation prescribes.")
        return 0
    print(f"\nDISAGREEMENT on {bad} of {len(rows)} quantities ({rule} not met).\n"
          "The first FAIL row from the top (the output side) is where the δ recursion goes wrong.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
