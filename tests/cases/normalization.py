"""torchbp.functional.normalization: batch, instance, layer, group and RMS norm as functions (the modules'
running statistics over several steps are tests/test_normalization.py's)."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, Case, shape_id

HAS_RMS = hasattr(F, "rms_norm")
CASES = []

for training in (True, False):
    for affine in (True, False):
        CASES.append(Case(f"normalization.batch_norm-4x3x5-{'train' if training else 'eval'}-affine{affine}",
                          tbf.batch_norm, F.batch_norm,
                          lambda training=training, affine=affine: (
                              torch.randn(4, 3, 5, requires_grad=True) * 3, torch.randn(3), torch.rand(3) + 0.5,
                              torch.randn(3, requires_grad=True) if affine else None,
                              torch.randn(3, requires_grad=True) if affine else None, training, 0.1, 1e-5),
                          checks=(FLOAT64,)))

# (7,) with seed 0 is ill-conditioned: |δ_x| ≈ 2e-7 |δ|, native and δ both off by 2e-10 from exact
for shape, nshape in [((2, 3, 4, 5), (5,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4, 5), (3, 4, 5)), ((9,), (9,)),
                      ((6, 5), [5])]:
    for affine in ("both", "weight", "none"):
        def ln_args(shape=shape, nshape=nshape, affine=affine):
            ns = (nshape,) if isinstance(nshape, int) else nshape
            w = torch.randn(ns, requires_grad=True) if affine != "none" else None
            b = torch.randn(ns, requires_grad=True) if affine == "both" else None
            x = (torch.rand(shape) * 6 - 2).requires_grad_()  # not randn: util's v would be x's own draw
            return x, nshape, w, b, 1e-5
        CASES.append(Case(f"normalization.layer_norm-{shape_id(shape)}-{shape_id(nshape)}-{affine}", tbf.layer_norm,
                          F.layer_norm, ln_args, checks=(FLOAT64,)))

for shape in [(2, 6), (2, 6, 5), (2, 6, 3, 4)]:
    for groups in (1, 2, 3, 6):
        if groups == 6 and len(shape) == 2:
            continue  # one value per group: δ_x is exactly 0, native's is rounding noise
        x = lambda shape=shape: torch.randn(shape, requires_grad=True) * 2 + 1  # noqa: E731
        CASES += [
            Case(f"normalization.group_norm-{shape_id(shape)}-g{groups}-affine", tbf.group_norm, F.group_norm,
                 lambda x=x, groups=groups: (x(), groups, torch.randn(6, requires_grad=True),
                                             torch.randn(6, requires_grad=True), 1e-5), checks=(FLOAT64,)),
            Case(f"normalization.group_norm-{shape_id(shape)}-g{groups}", tbf.group_norm, F.group_norm,
                 lambda x=x, groups=groups: (x(), groups), checks=(FLOAT64,)),
        ]

if HAS_RMS:
    for nshape in [(5,), (4, 5)]:
        for weight in (True, False):
            for eps in (None, 1e-3):
                CASES.append(Case(f"normalization.rms_norm-{shape_id(nshape)}-w{weight}-eps{eps}", tbf.rms_norm,
                                  F.rms_norm, lambda nshape=nshape, weight=weight, eps=eps: (
                                      torch.randn(2, 3, 4, 5, requires_grad=True), nshape,
                                      torch.randn(nshape, requires_grad=True) if weight else None, eps),
                                  checks=(FLOAT64,)))
    CASES.append(Case("normalization.rms_norm-3x4", lambda x, w: tbf.rms_norm(x, (4,), w, 1e-5), None,
                      lambda: (torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)),
                      checks=(GRADCHECK,)))


def _stats(x):
    return torch.tensor([0.1, -0.2], dtype=x.dtype), torch.tensor([0.5, 2.0], dtype=x.dtype)


for name, fn, shape, pshape in [
    ("batch_norm_train", lambda x, w, b: tbf.batch_norm(x, None, None, w, b, True), (3, 2, 4), 2),
    ("batch_norm_eval", lambda x, w, b: tbf.batch_norm(x, *_stats(x), w, b, False), (3, 2, 4), 2),
    ("layer_norm", lambda x, w, b: tbf.layer_norm(x, (3, 4), w, b), (2, 3, 4), (3, 4)),
    ("group_norm", lambda x, w, b: tbf.group_norm(x, 2, w, b), (2, 4, 3), 4),
    ("instance_norm", lambda x, w, b: tbf.instance_norm(x, None, None, w, b), (2, 2, 4), 2),
    ("instance_norm_eval", lambda x, w, b: tbf.instance_norm(x, *_stats(x), w, b, False), (2, 2, 3), 2),
]:
    CASES.append(Case(f"normalization.{name}-{shape_id(shape)}", fn, None,
                      lambda shape=shape, pshape=pshape: (torch.randn(shape, requires_grad=True),
                                                          torch.randn(pshape, requires_grad=True),
                                                          torch.randn(pshape, requires_grad=True)),
                      checks=(GRADCHECK,)))

for name, ours, native, make in [
    ("batch_norm", tbf.batch_norm, F.batch_norm,
     lambda: (torch.randn(16, 8, 6, requires_grad=True), None, None, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True), True)),
    ("layer_norm", tbf.layer_norm, F.layer_norm,
     lambda: (torch.randn(16, 64, requires_grad=True) + 2, (64,), torch.randn(64, requires_grad=True),
              torch.randn(64, requires_grad=True))),
    ("group_norm", tbf.group_norm, F.group_norm,
     lambda: (torch.randn(4, 8, 32, requires_grad=True), 4, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True))),
    ("instance_norm", tbf.instance_norm, F.instance_norm,
     lambda: (torch.randn(4, 8, 32, requires_grad=True), None, None, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True))),
] + ([("rms_norm", tbf.rms_norm, F.rms_norm,
       lambda: (torch.randn(16, 64, requires_grad=True), (64,), torch.randn(64, requires_grad=True)))]
     if HAS_RMS else []):
    CASES.append(Case(f"normalization.{name}-low", ours, native, make, checks=(LOW,)))
