"""torchbp.functional.activation: the pointwise activations, softmax and its kin, PReLU, GLU."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import LOW, Case, kw_id, shape_id, sweep

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
    CASES += sweep("activation", ours.__name__ + (f"[{kw_id(kw)}]" if kw else ""), ours, native, kw,
                   float64=[(shape_id(s), lambda s=s: (with_kinks(s),)) for s in shapes],
                   gradcheck=[("3x4", lambda: (away_from_kinks(),))],
                   low=[("16x33", lambda: (torch.randn(16, 33, requires_grad=True),))])


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


for shape, n in [((), 1), ((5,), 1), ((5,), 0), ((4, 3), 1), ((4, 3), 3), ((2, 3, 5), 3), ((2, 3, 4, 4), 3),
                 ((2, 3, 4, 4), 1)]:  # (input shape, weight elements; 0: a 0-d weight)
    CASES += sweep("activation", "prelu", tbf.prelu, F.prelu,
                   float64=[(f"{shape_id(shape)}-w{n}", lambda shape=shape, n=n: prelu_args(shape, n))],
                   gradcheck=[(f"{shape_id(shape)}-w{n}", lambda shape=shape, n=n: prelu_gradcheck_args(shape, n))])
for n in (1, 8):
    CASES.append(Case(f"activation.prelu-4x8x3x3-w{n}", tbf.prelu, F.prelu,
                      lambda n=n: (torch.randn(4, 8, 3, 3, requires_grad=True), (torch.rand(n) * 0.5).requires_grad_()),
                      checks=(LOW,)))

# --- GLU: a ⊙ σ(b) over the two halves of dim -------------------------------------------------------------
for shape, dim in [((6,), -1), ((4, 6), -1), ((4, 6), 0), ((2, 4, 3), 1), ((2, 3, 4, 2), -2)]:
    CASES += sweep("activation", f"glu[dim={dim}]", tbf.glu, F.glu, {"dim": dim},
                   float64=[(shape_id(shape), lambda shape=shape: (torch.randn(shape, requires_grad=True) * 3,))],
                   gradcheck=[(shape_id(shape), lambda shape=shape: (torch.randn(shape, requires_grad=True),))])
CASES.append(Case("activation.glu-16x34", tbf.glu, F.glu, lambda: (torch.randn(16, 34, requires_grad=True),),
                  checks=(LOW,)))
