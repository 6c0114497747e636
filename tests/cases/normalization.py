"""torchbp.functional.normalization: batch, instance, layer, group and RMS norm as functions, the modules
without buffers (LayerNorm, GroupNorm, RMSNorm) as twins, and the inputs both sides refuse (the modules'
running statistics over several steps are tests/test_normalization.py's)."""
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, VMAP, Bad, Case, ModuleCall, kw_id, shape_id

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
                          checks=SWEEP[FLOAT64], vmap_dims=(2,) + (None,) * 7,  # per example: a (4, 3) batch
                          skip={VMAP: "native refuses running statistics updated in place under vmap"}
                          if training else {}))

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
                          F.layer_norm, ln_args, checks=SWEEP[FLOAT64],
                          skip={VMAP: "every dim is normalized: no example dim to map"} if len(shape) == 1 else {}))

for shape in [(2, 6), (2, 6, 5), (2, 6, 3, 4)]:
    for groups in (1, 2, 3, 6):
        if groups == 6 and len(shape) == 2:
            continue  # one value per group: δ_x is exactly 0, native's is rounding noise
        x = lambda shape=shape: torch.randn(shape, requires_grad=True) * 2 + 1  # noqa: E731
        # per example: the (N, C, *) input mapped over its last dim (dim 0 would leave no batch dim)
        vmap = dict(skip={VMAP: "(N, C): no dim to map but the channels"}) if len(shape) == 2 else \
            dict(skip={VMAP: "per example (2, 6) in 6 groups: one value per group, δ_x exactly 0"}) \
            if len(shape) == 3 and groups == 6 else dict(vmap_dims=(len(shape) - 1, None))
        affine_vmap = dict(vmap, vmap_dims=vmap["vmap_dims"] + (None,) * 3) if "vmap_dims" in vmap else vmap
        CASES += [
            Case(f"normalization.group_norm-{shape_id(shape)}-g{groups}-affine", tbf.group_norm, F.group_norm,
                 lambda x=x, groups=groups: (x(), groups, torch.randn(6, requires_grad=True),
                                             torch.randn(6, requires_grad=True), 1e-5), checks=SWEEP[FLOAT64],
                 **affine_vmap),
            Case(f"normalization.group_norm-{shape_id(shape)}-g{groups}", tbf.group_norm, F.group_norm,
                 lambda x=x, groups=groups: (x(), groups), checks=SWEEP[FLOAT64], **vmap),
        ]

for use_input_stats in (True, False):
    for affine in (True, False):
        for running in (True, False):
            if not (use_input_stats or running):
                continue  # running statistics are required without input statistics
            CASES.append(Case(
                f"normalization.instance_norm-4x3x5x2-{'input' if use_input_stats else 'running'}_stats"
                f"-running{running}-affine{affine}", tbf.instance_norm, F.instance_norm,
                lambda running=running, affine=affine, use_input_stats=use_input_stats: (
                    torch.randn(4, 3, 5, 2, requires_grad=True) * 3 + 1, torch.randn(3) if running else None,
                    torch.rand(3) + 0.5 if running else None, torch.randn(3, requires_grad=True) if affine else None,
                    torch.randn(3, requires_grad=True) if affine else None, use_input_stats, 0.2, 1e-4),
                checks=SWEEP[FLOAT64], vmap_dims=(3,) + (None,) * 7,  # per example: a (4, 3, 5) batch
                skip={VMAP: "native refuses running statistics updated in place under vmap"}
                if use_input_stats and running else {}))

if HAS_RMS:
    for nshape in [(5,), (4, 5)]:
        for weight in (True, False):
            for eps in (None, 1e-3):
                CASES.append(Case(f"normalization.rms_norm-{shape_id(nshape)}-w{weight}-eps{eps}", tbf.rms_norm,
                                  F.rms_norm, lambda nshape=nshape, weight=weight, eps=eps: (
                                      torch.randn(2, 3, 4, 5, requires_grad=True), nshape,
                                      torch.randn(nshape, requires_grad=True) if weight else None, eps),
                                  checks=SWEEP[FLOAT64]))
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
    CASES.append(Case(f"normalization.{name}-low", ours, native, make, checks=SWEEP[LOW]))


# --- the modules without buffers: the twin against native, random parameters ---------------------------------
def norm_module(cls, kw, shape, **options):
    def args():
        params = [torch.randn(p.shape, dtype=torch.float64, requires_grad=True) for p in cls(**kw).parameters()]
        return ((torch.randn(shape, dtype=torch.float64) * 2 + 0.5).requires_grad_(), *params)
    return Case(f"normalization.{cls.__name__}[{kw_id(kw)}]-{shape_id(shape)}", ModuleCall(cls, kw, True),
                ModuleCall(cls, kw, False), args, checks=SWEEP[FLOAT64], **options)


nn = torch.nn
CASES += [
    norm_module(nn.LayerNorm, {"normalized_shape": 5}, (2, 3, 5)),
    norm_module(nn.LayerNorm, {"normalized_shape": (4, 5)}, (2, 3, 4, 5)),
    norm_module(nn.LayerNorm, {"normalized_shape": (3, 4, 5), "elementwise_affine": False}, (2, 3, 4, 5)),
    norm_module(nn.GroupNorm, {"num_groups": 1, "num_channels": 6}, (2, 6, 4), vmap_dims=(2, None, None)),
    norm_module(nn.GroupNorm, {"num_groups": 2, "num_channels": 6}, (2, 6, 3, 3), vmap_dims=(3, None, None)),
    norm_module(nn.GroupNorm, {"num_groups": 3, "num_channels": 6, "affine": False}, (2, 6, 5), vmap_dims=(2,)),
    norm_module(nn.GroupNorm, {"num_groups": 3, "num_channels": 6}, (3, 6),
                skip={VMAP: "(N, C): no dim to map but the channels"}),
] + ([
    norm_module(nn.RMSNorm, {"normalized_shape": 5}, (2, 3, 5)),
    norm_module(nn.RMSNorm, {"normalized_shape": (4, 5), "eps": 1e-3}, (2, 4, 5)),
    norm_module(nn.RMSNorm, {"normalized_shape": 5, "elementwise_affine": False}, (3, 5)),
] if hasattr(nn, "RMSNorm") else [])


# --- bad inputs: refused by native too, and torchbp's error names the op ----------------------------------------
def x465():
    return (torch.randn(4, 6, 5),)


BAD = [
    Bad("normalization.layer_norm-shape", tbf.layer_norm, F.layer_norm, x465,
        r"layer_norm: normalized_shape=\[4\] must match", {"normalized_shape": (4,)}),
    Bad("normalization.layer_norm-weight-shape", tbf.layer_norm, F.layer_norm, x465,
        r"layer_norm: weight must have shape \[5\]", lambda: {"normalized_shape": (5,), "weight": torch.randn(4)}),
    Bad("normalization.layer_norm-weight-dtype", tbf.layer_norm, F.layer_norm, x465,
        "layer_norm: weight has dtype torch.float64",
        lambda: {"normalized_shape": (5,), "weight": torch.randn(5, dtype=torch.float64)}),
    Bad("normalization.group_norm-groups", tbf.group_norm, F.group_norm, x465,
        "group_norm: the 6 channels .* divisible by num_groups=4", {"num_groups": 4}),
    Bad("normalization.batch_norm-weight", tbf.batch_norm, F.batch_norm,
        lambda: (torch.randn(4, 6, 5), None, None, torch.randn(5), None, True),
        r"batch_norm: weight must have 6 elements"),
    Bad("normalization.batch_norm-eval-no-stats", tbf.batch_norm, F.batch_norm,
        lambda: (torch.randn(4, 6, 5), None, None), "batch_norm: running_mean and running_var must be given",
        {"training": False}),
    Bad("normalization.batch_norm-one-value", tbf.batch_norm, F.batch_norm,
        lambda: (torch.randn(1, 6), None, None), "batch_norm: Expected more than 1 value per channel",
        {"training": True}),
    Bad("normalization.instance_norm-one-spatial", tbf.instance_norm, F.instance_norm, lambda: (torch.randn(2, 6, 1),),
        "instance_norm: Expected more than 1 spatial element"),
    Bad("normalization.instance_norm-one-running", tbf.instance_norm, F.instance_norm,
        lambda: (torch.randn(4, 6, 5), torch.zeros(6)),
        "instance_norm: running_mean and running_var must either both be None"),
    Bad("normalization.instance_norm-no-stats", tbf.instance_norm, F.instance_norm, x465,
        "instance_norm: running_mean and running_var must be given", {"use_input_stats": False}),
    Bad("normalization.instance_norm-weight", tbf.instance_norm, F.instance_norm, x465,
        "instance_norm: weight must have 6 elements", lambda: {"weight": torch.randn(5)}),
    Bad("normalization.InstanceNorm1d-num_features", lambda x: torchbp.swap(nn.InstanceNorm1d(5, affine=True))(x),
        nn.InstanceNorm1d(5, affine=True), x465, "expected input's size at dim=1 to match num_features",
        why="the module's own check"),
    Bad("normalization.BatchNorm1d-4d", lambda x: torchbp.swap(nn.BatchNorm1d(6))(x), nn.BatchNorm1d(6),
        lambda: (torch.randn(2, 6, 2, 2),), "expected 2D or 3D input", why="the module's own check"),
]
