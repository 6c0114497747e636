"""torchbp.functional.linear: linear, bilinear."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, ROUTE, SWEEP, VMAP, Bad, Case, module_case, shape_id

CASES = []

# --- linear: z = W a + b ----------------------------------------------------------------------------------
for shape in [(5,), (4, 5), (2, 3, 5), (2, 1, 3, 5)]:
    for bias in (True, False):
        CASES.append(Case(f"linear.linear-{shape_id(shape)}-{'bias' if bias else 'nobias'}", tbf.linear, F.linear,
                          lambda shape=shape, bias=bias: (torch.randn(shape, requires_grad=True),
                                                          torch.randn(6, 5, requires_grad=True),
                                                          torch.randn(6, requires_grad=True) if bias else None),
                          checks=SWEEP[FLOAT64], skip={VMAP: "a 1-D input's slice is 0-d"} if len(shape) == 1 else {}))
CASES += [
    Case("linear.linear-2x3x5-bias", tbf.linear, F.linear,
         lambda: (torch.randn(2, 3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True),
                  torch.randn(4, requires_grad=True)), checks=(GRADCHECK,)),
    Case("linear.linear-3x5-nobias", tbf.linear, F.linear,
         lambda: (torch.randn(3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True), None),
         checks=(GRADCHECK,)),
    Case("linear.linear-8x32", tbf.linear, F.linear,
         lambda: (torch.randn(8, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True),
                  torch.randn(16, requires_grad=True)), checks=SWEEP[LOW]),
]


# --- bilinear: z_o = a1ᵀ W_o a2 + b_o ---------------------------------------------------------------------
def bilinear_args(lead, bias=True, grads="xwb"):
    return (torch.randn(*lead, 5, requires_grad="x" in grads), torch.randn(*lead, 3, requires_grad="x" in grads),
            torch.randn(6, 5, 3, requires_grad="w" in grads),
            torch.randn(6, requires_grad="b" in grads) if bias else None)


for lead in [(), (4,), (2, 3), (2, 1, 3), (0,)]:  # leading dims of both inputs
    for bias in (True, False):
        CASES.append(Case(f"linear.bilinear-{shape_id(lead)}-{'bias' if bias else 'nobias'}", tbf.bilinear,
                          F.bilinear, lambda lead=lead, bias=bias: bilinear_args(lead, bias), checks=SWEEP[FLOAT64],
                          vmap_dims=(0, 0, None, None),  # both inputs per example, weight and bias shared
                          skip={VMAP: "no leading dim to vmap over"} if not lead else
                          {VMAP: "native's bilinear refuses a vmap over zero examples"} if lead == (0,) else {}))
CASES += [
    Case("linear.bilinear-2x3-bias", tbf.bilinear, F.bilinear, lambda: bilinear_args((2, 3)), checks=(GRADCHECK,)),
    Case("linear.bilinear-4-nobias", tbf.bilinear, F.bilinear, lambda: bilinear_args((4,), bias=False),
         checks=(GRADCHECK,)),
    Case("linear.bilinear-0d-bias", tbf.bilinear, F.bilinear, lambda: bilinear_args(()), checks=(GRADCHECK,)),
    Case("linear.bilinear-16", tbf.bilinear, F.bilinear,
         lambda: (torch.randn(16, 24, requires_grad=True), torch.randn(16, 20, requires_grad=True),
                  torch.randn(12, 24, 20, requires_grad=True) / 5, torch.randn(12, requires_grad=True)),
         checks=SWEEP[LOW]),
]


# --- the linear family as torch ops: matmul (every broadcasting case), mm, bmm, addmm -------------------------
def leaves(*shapes):
    return tuple(torch.randn(s, requires_grad=True) for s in shapes)


MATMUL_SHAPES = [  # every broadcasting case of torch.matmul
    ((4,), (4,)), ((4,), (4, 5)), ((4,), (2, 3, 4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4,)),
    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
    ((1, 3, 4), (2, 4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 2, 3, 4), (4,)),
]
MATMUL_VMAP = {  # a 1-D first argument: vmap over the second's dims instead, or over none
    ((4,), (4,)): {"skip": {VMAP: "both slices are 0-d"}},
    ((4,), (4, 5)): {"vmap_dims": (None, 1)}, ((4,), (2, 3, 4, 5)): {"vmap_dims": (None, 0)},
}
for a, b in MATMUL_SHAPES:
    CASES.append(Case(f"linear.matmul-{shape_id(a)}@{shape_id(b)}", tbf.matmul, torch.matmul,
                      lambda a=a, b=b: leaves(a, b), checks=SWEEP[FLOAT64] + (GRADCHECK,),
                      **MATMUL_VMAP.get((a, b), {})))
for a, b in [((4,), (4, 5)), ((2, 8, 16), (16, 8)), ((8, 16), (3, 16, 8))]:
    CASES.append(Case(f"linear.matmul-{shape_id(a)}@{shape_id(b)}", tbf.matmul, torch.matmul,
                      lambda a=a, b=b: leaves(a, b), checks=SWEEP[LOW]))
CASES += [
    Case("linear.mm-3x4@4x5", tbf.mm, torch.mm, lambda: leaves((3, 4), (4, 5)), checks=SWEEP[FLOAT64],
         skip={VMAP: "mm takes 2-D arguments: a slice is 1-D"}),
    Case("linear.bmm-2x3x4@2x4x5", tbf.bmm, torch.bmm, lambda: leaves((2, 3, 4), (2, 4, 5)),
         checks=SWEEP[FLOAT64] + (GRADCHECK,), skip={VMAP: "bmm takes 3-D arguments: a slice is 2-D"}),
    Case("linear.addmm-5+3x4@4x5", tbf.addmm, torch.addmm, lambda: leaves((5,), (3, 4), (4, 5)),
         {"beta": 0.5, "alpha": 2.0}, checks=(GRADCHECK,)),
]
for M in [(3, 5), (5,), (1, 5), (3, 1), ()]:
    for beta, alpha in [(1, 1), (0.5, -2.0), (0, 1)]:
        CASES.append(Case(f"linear.addmm-{shape_id(M)}+3x4@4x5-beta{beta}-alpha{alpha}", tbf.addmm, torch.addmm,
                          lambda M=M: leaves(M, (3, 4), (4, 5)), {"beta": beta, "alpha": alpha},
                          checks=SWEEP[FLOAT64] + SWEEP[LOW], low_dtypes=(torch.bfloat16,),
                          skip={VMAP: "a 0-d input has no dim to vmap over"} if not M else {}))

# --- torch's other names for the same ops (ROUTE: each routed to its δ Function) ---------------------------
CASES += [
    Case("linear.Tensor.matmul-2x3x4@4x5", tbf.matmul, torch.Tensor.matmul, lambda: leaves((2, 3, 4), (4, 5)),
         checks=SWEEP[FLOAT64]),
    Case("linear.operator.matmul-3x4@2x4x5", tbf.matmul, __import__("operator").matmul,
         lambda: leaves((3, 4), (2, 4, 5)), checks=SWEEP[FLOAT64], vmap_dims=(None, 0)),
    Case("linear.Tensor.mm-3x4@4x5", tbf.mm, torch.Tensor.mm, lambda: leaves((3, 4), (4, 5)), checks=(ROUTE,)),
    Case("linear.Tensor.bmm-2x3x4@2x4x5", tbf.bmm, torch.Tensor.bmm, lambda: leaves((2, 3, 4), (2, 4, 5)),
         checks=(ROUTE,)),
    Case("linear.Tensor.addmm-3x5+3x4@4x5", tbf.addmm, torch.Tensor.addmm, lambda: leaves((3, 5), (3, 4), (4, 5)),
         {"beta": 0.5, "alpha": 2.0}, checks=SWEEP[FLOAT64]),
    Case("linear.torch.bilinear-3-nobias", tbf.bilinear, torch.bilinear, lambda: bilinear_args((3,), bias=False),
         checks=SWEEP[FLOAT64], vmap_dims=(0, 0, None, None)),
]

# --- the twin of torch.nn.Linear ------------------------------------------------------------------------------
CASES += [module_case("linear", torch.nn.Linear, {"in_features": 8, "out_features": 3}, (4, 8),
                      SWEEP[FLOAT64] + SWEEP[LOW]),
          module_case("linear", torch.nn.Linear, {"in_features": 5, "out_features": 4, "bias": False}, (2, 3, 5),
                      SWEEP[FLOAT64])]


# --- refused inputs --------------------------------------------------------------------------------------
def _bad(op, tag, args, match, native=None):
    return Bad(f"linear.{op}-{tag}", getattr(tbf, op), native or getattr(F if op in ("linear", "bilinear") else torch, op),
               args, f"torchbp.functional.{op}: {match}")


def _bilinear_bad(tag, change, match):
    def args():
        x1, x2, W = torch.randn(4, 5), torch.randn(4, 3), torch.randn(6, 5, 3)
        return change(x1, x2, W)
    return _bad("bilinear", tag, args, match)


BAD = [
    _bad("linear", "features", lambda: (torch.randn(3, 4), torch.randn(2, 5)), r"input has 4 features"),
    _bad("linear", "dtype", lambda: (torch.randn(3, 5), torch.randn(2, 5, dtype=torch.float64)),
         r"weight has dtype torch.float64"),
    _bad("linear", "bias", lambda: (torch.randn(3, 5), torch.randn(2, 5), torch.randn(3)), r"bias must have shape \[2\]"),
    _bilinear_bad("lead", lambda x1, x2, W: (x1, torch.randn(2, 3), W),
                  r"input1 and input2 must have the same leading dims"),
    _bilinear_bad("lead-rank", lambda x1, x2, W: (x1, x2[0], W), r"input1 and input2 must have the same leading dims"),
    _bilinear_bad("features1", lambda x1, x2, W: (x1, x2, W[:, :4]),
                  r"input1 has 5 features in its last dim but weight expects 4"),
    _bilinear_bad("features2", lambda x1, x2, W: (x1, x2, W[:, :, :2]),
                  r"input2 has 3 features in its last dim but weight expects 2"),
    _bilinear_bad("weight-2d", lambda x1, x2, W: (x1, x2, W[0]), r"weight must be 3-D"),
    _bilinear_bad("bias", lambda x1, x2, W: (x1, x2, W, torch.randn(5)), r"bias must have shape \[6\]"),
    _bilinear_bad("dtype2", lambda x1, x2, W: (x1, x2.double(), W), r"input2 has dtype torch.float64"),
    _bilinear_bad("dtype-weight", lambda x1, x2, W: (x1, x2, W.double()), r"weight has dtype torch.float64"),
    _bad("matmul", "shapes", lambda: (torch.randn(3, 4), torch.randn(5, 2)), r"cannot multiply shapes \[3, 4\] and \[5, 2\]"),
    _bad("matmul", "batch", lambda: (torch.randn(2, 3, 4), torch.randn(3, 4, 5)), r".*batch dims do not broadcast"),
    _bad("matmul", "0d", lambda: (torch.tensor(2.0), torch.randn(3)), r"both arguments need at least 1 dimension"),
    _bad("matmul", "dtype", lambda: (torch.randn(3, 4), torch.randn(4, 5, dtype=torch.float64)),
         r"other has dtype torch.float64"),
    _bad("mm", "3d", lambda: (torch.randn(2, 3, 4), torch.randn(4, 5)), r"both arguments must be 2-D"),
    _bad("bmm", "batch", lambda: (torch.randn(2, 3, 4), torch.randn(1, 4, 5)), r".*equal batch sizes"),
    _bad("addmm", "broadcast", lambda: (torch.randn(4), torch.randn(3, 4), torch.randn(4, 5)),
         r"input of shape \[4\] does not broadcast"),
]
