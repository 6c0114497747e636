"""torchbp.functional.activation: the pointwise activations, softmax and its kin, PReLU, GLU."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, LOW, SWEEP, VMAP, Bad, Case, kw_id, module_case, shape_id, sweep

ACTIVATIONS = [  # (ours, native, kwargs)
    (tbf.sigmoid, torch.sigmoid, {}),
    (tbf.tanh, torch.tanh, {}),
    (tbf.relu, F.relu, {}),
    (tbf.leaky_relu, F.leaky_relu, {}),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": 0.2}),
    (tbf.leaky_relu, F.leaky_relu, {"negative_slope": -0.3}),
    (tbf.elu, F.elu, {}),
    (tbf.elu, F.elu, {"alpha": 0.5}),
    (tbf.gelu, F.gelu, {}),
    (tbf.gelu, F.gelu, {"approximate": "tanh"}),
    (tbf.silu, F.silu, {}),
    (tbf.softplus, F.softplus, {}),
    (tbf.softplus, F.softplus, {"beta": 2.0, "threshold": 1.0}),
    (tbf.hardtanh, F.hardtanh, {}),
    (tbf.hardtanh, F.hardtanh, {"min_val": -0.5, "max_val": 2.0}),
    (tbf.relu6, F.relu6, {}),
    (tbf.softmax, F.softmax, {"dim": -1}),
    (tbf.softmax, F.softmax, {"dim": 0}),
    (tbf.softmax, F.softmax, {"dim": 1}),
    (tbf.log_softmax, F.log_softmax, {"dim": -1}),
    (tbf.log_softmax, F.log_softmax, {"dim": 1}),
    (tbf.hardswish, F.hardswish, {}),
    (tbf.hardsigmoid, F.hardsigmoid, {}),
    (tbf.mish, F.mish, {}),
    (tbf.selu, F.selu, {}),
    (tbf.celu, F.celu, {}),
    (tbf.celu, F.celu, {"alpha": 0.5}),
    (tbf.celu, F.celu, {"alpha": -1.5}),
    (tbf.celu, F.celu, {"alpha": 0.7}),  # no float32 number: native's 1/α is rounded (see CELU)
    (tbf.logsigmoid, F.logsigmoid, {}),
    (tbf.softsign, F.softsign, {}),
    (tbf.tanhshrink, F.tanhshrink, {}),
    (tbf.threshold, F.threshold, {"threshold": 1.0, "value": -2.0}),
    (tbf.threshold, F.threshold, {"threshold": 0.3, "value": 5.0}),
    (tbf.hardshrink, F.hardshrink, {}),
    (tbf.hardshrink, F.hardshrink, {"lambd": 1.0}),
    (tbf.softshrink, F.softshrink, {}),
    (tbf.softshrink, F.softshrink, {"lambd": 1.0}),
    (tbf.softmin, F.softmin, {"dim": -1}),
    (tbf.softmin, F.softmin, {"dim": 1}),
]


def with_kinks(shape=(3, 4, 5)):
    """×3 normal values with 0, ±1 and 6 (kinks and boundaries) among them."""
    x = torch.randn(shape) * 3
    x.view(-1)[:4] = torch.tensor([0.0, 1.0, -1.0, 6.0])
    return x.requires_grad_()


def away_from_kinks():
    """Where finite differences mean something: |z| > 0.1."""
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    return (x + 0.1 * x.sign()).requires_grad_()


CASES = []
for ours, native, kw in ACTIVATIONS:
    shapes = [s for s in [(7,), (3, 5), (3, 4, 5)] if not (kw.get("dim") == 1 and len(s) < 2)]  # dim 1 needs 2-D
    name = ours.__name__ + (f"[{kw_id(kw)}]" if kw else "")
    # vmap's per-example slice of a 2-D input is 1-D: it has no dim 1 (the 3-D input takes VMAP)
    flat = [s for s in shapes if kw.get("dim") == 1 and len(s) == 2]
    CASES += sweep("activation", name, ours, native, kw,
                   float64=[(shape_id(s), lambda s=s: (with_kinks(s),)) for s in shapes if s not in flat],
                   gradcheck=[("3x4", lambda: (away_from_kinks(),))],
                   low=[("16x33", lambda: (torch.randn(16, 33, requires_grad=True),))])
    CASES += sweep("activation", name, ours, native, kw, skip={VMAP: "a 1-D slice has no dim 1"},
                   float64=[(shape_id(s), lambda s=s: (with_kinks(s),)) for s in flat])


# --- PReLU: a = max(0, z) + w·min(0, z), w per channel -----------------------------------------------------
def prelu_args(shape, n):
    x = torch.randn(shape) * 2
    if x.dim():
        x.view(-1)[:2] = torch.tensor([0.0, -0.0])  # the kink: δ_z = w·δ_a there, as native
    w = torch.rand(n) * 0.5 - 0.1 if n else torch.tensor(0.25)
    w.view(-1)[0] = -0.1  # a negative slope too
    return x.requires_grad_(), w.requires_grad_()


def prelu_gradcheck_args(shape, n):
    _, w = prelu_args(shape, n)
    x = torch.randn(shape, dtype=torch.float64)
    return (x + 0.1 * x.sign()).requires_grad_(), w  # away from the kink


PRELU_VMAP = {  # per-channel weights: vmap over a dim that leaves the channels at dim 1 of the slice
    ((), 1): {"skip": {VMAP: "a 0-d input has no dim to vmap over"}},
    ((4, 3), 3): {"skip": {VMAP: "a 1-D slice has one channel, the weight three"}},
    ((2, 3, 5), 3): {"vmap_dims": (2, None)}, ((2, 3, 4, 4), 3): {"vmap_dims": (3, None)},
}
for shape, n in [((), 1), ((5,), 1), ((5,), 0), ((4, 3), 1), ((4, 3), 3), ((2, 3, 5), 3), ((2, 3, 4, 4), 3),
                 ((2, 3, 4, 4), 1)]:  # (input shape, weight elements; 0: a 0-d weight)
    CASES += sweep("activation", "prelu", tbf.prelu, F.prelu,
                   float64=[(f"{shape_id(shape)}-w{n}", lambda shape=shape, n=n: prelu_args(shape, n))],
                   gradcheck=[(f"{shape_id(shape)}-w{n}", lambda shape=shape, n=n: prelu_gradcheck_args(shape, n))],
                   **PRELU_VMAP.get((shape, n), {}))
for n in (1, 8):
    CASES.append(Case(f"activation.prelu-4x8x3x3-w{n}", tbf.prelu, F.prelu,
                      lambda n=n: (torch.randn(4, 8, 3, 3, requires_grad=True), (torch.rand(n) * 0.5).requires_grad_()),
                      checks=SWEEP[LOW]))

# --- GLU: a ⊙ σ(b) over the two halves of dim -------------------------------------------------------------
GLU_VMAP = {((6,), -1): {"skip": {VMAP: "a 0-d slice has nothing to halve"}},
            ((2, 4, 3), 1): {"vmap_dims": (2,)}}  # the slice keeps dim 1 (4) to halve
for shape, dim in [((6,), -1), ((4, 6), -1), ((4, 6), 0), ((2, 4, 3), 1), ((2, 3, 4, 2), -2)]:
    CASES += sweep("activation", f"glu[dim={dim}]", tbf.glu, F.glu, {"dim": dim},
                   float64=[(shape_id(shape), lambda shape=shape: (torch.randn(shape, requires_grad=True) * 3,))],
                   gradcheck=[(shape_id(shape), lambda shape=shape: (torch.randn(shape, requires_grad=True),))],
                   **GLU_VMAP.get((shape, dim), {}))
CASES.append(Case("activation.glu-16x34", tbf.glu, F.glu, lambda: (torch.randn(16, 34, requires_grad=True),),
                  checks=SWEEP[LOW]))

# --- the same ops reached by torch's other names (ROUTE: each routed to its δ Function) --------------------
for ours, native, name, kw in [(tbf.selu, torch.selu, "torch.selu", {}), (tbf.celu, torch.celu, "torch.celu", {"alpha": 0.5}),
                               (tbf.threshold, torch.threshold, "torch.threshold", {"threshold": 0.5, "value": 2.0}),
                               (tbf.hardshrink, torch.Tensor.hardshrink, "Tensor.hardshrink", {"lambd": 0.3})]:
    CASES += sweep("activation", name, ours, native, kw, float64=[("4x6", lambda: (with_kinks((4, 6)),))])
CASES += sweep("activation", "Tensor.prelu", tbf.prelu, torch.Tensor.prelu,
               float64=[("4x6-w6", lambda: prelu_args((4, 6), 6))], vmap_dims=(0, None),
               skip={VMAP: "a 1-D slice has one channel, the weight six"})


# --- the twins of torch.nn's activation modules --------------------------------------------------------------
def scaled(shape):
    return (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()


TWINS = [  # (module class, kwargs, input shape, options)
    (torch.nn.Hardswish, {}, (3, 4, 5), {}), (torch.nn.Hardsigmoid, {}, (3, 4, 5), {}), (torch.nn.Mish, {}, (3, 4, 5), {}),
    (torch.nn.SELU, {}, (3, 4, 5), {}), (torch.nn.CELU, {"alpha": 0.7}, (3, 4, 5), {}),
    (torch.nn.LogSigmoid, {}, (3, 4, 5), {}), (torch.nn.Softsign, {}, (3, 4, 5), {}),
    (torch.nn.Tanhshrink, {}, (3, 4, 5), {}), (torch.nn.Threshold, {"threshold": 0.1, "value": -1.0}, (3, 4, 5), {}),
    (torch.nn.Hardshrink, {"lambd": 0.3}, (3, 4, 5), {}), (torch.nn.Softshrink, {"lambd": 0.3}, (3, 4, 5), {}),
    (torch.nn.GLU, {"dim": 1}, (3, 4, 5), {"vmap_dims": (2,)}),  # the slice keeps dim 1 (4) to halve
    (torch.nn.PReLU, {}, (3, 4, 5), {}),
    (torch.nn.PReLU, {"num_parameters": 4}, (3, 4, 5), {"vmap_dims": (2, None)}),  # the slice keeps 4 channels
    (torch.nn.Softmin, {"dim": 1}, (3, 4, 5), {}), (torch.nn.Softmax2d, {}, (2, 3, 4, 5), {}),
]
CASES += [module_case("activation", cls, kw, shape, SWEEP[FLOAT64], x=scaled, **options)
          for cls, kw, shape, options in TWINS]


# --- refused inputs --------------------------------------------------------------------------------------
def _bad(name, args, match, ours=None, native=None, **options):
    return Bad(f"activation.{name}", ours or getattr(tbf, name.split("-")[0]),
               native or getattr(F, name.split("-")[0]), args, match, **options)


BAD = [
    _bad("prelu-1d", lambda: (torch.randn(3), torch.rand(3)),
         r"prelu: weight has 3 elements but input has 1 channels"),  # a 1-D input has one channel, as in torch
    _bad("prelu-channels", lambda: (torch.randn(2, 3), torch.rand(4)),
         r"prelu: weight has 4 elements but input has 3 channels"),
    _bad("prelu-2d-weight", lambda: (torch.randn(2, 3), torch.rand(3, 1)), r"prelu: weight must be 0-d or 1-D"),
    _bad("prelu-0d", lambda: (torch.tensor(1.0), torch.rand(2)), r"prelu: a 0-d input takes a weight of one element"),
    _bad("prelu-dtype", lambda: (torch.randn(2, 3), torch.rand(3, dtype=torch.float64)),
         r"prelu: weight has dtype torch.float64"),
    _bad("glu-odd", lambda: (torch.randn(2, 5), 1), r"glu: input's size along dim 1 must be even"),
    _bad("glu-0d", lambda: (torch.tensor(1.0),), r"glu: input must have at least 1 dim"),
    _bad("glu-dim", lambda: (torch.randn(2, 4), 3), r"glu: dim 3 is out of range"),
    _bad("softshrink-lambd", lambda: (torch.randn(3), -1.0), r"softshrink: lambd must be >= 0"),
    _bad("celu-alpha", lambda: (torch.randn(3), 0.0), r"celu: alpha cannot be 0"),
    _bad("softmin-dim", lambda: (torch.randn(2, 3), 2), r"softmin: dim 2 is out of range"),
    _bad("hardswish-integer", lambda: (torch.arange(3),), r"hardswish: input must be floating point"),
    Bad("activation.sigmoid-integer", tbf.sigmoid, None, lambda: (torch.arange(3),),
        r"torchbp.functional.sigmoid: input must be floating point",
        why="torch.sigmoid promotes integers to float; a δ Function takes the tensor a gradient flows to"),
]
