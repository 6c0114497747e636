"""torchbp.functional.linear: linear, bilinear."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, Case, shape_id

CASES = []

# --- linear: z = W a + b ----------------------------------------------------------------------------------
for shape in [(5,), (4, 5), (2, 3, 5), (2, 1, 3, 5)]:
    for bias in (True, False):
        CASES.append(Case(f"linear.linear-{shape_id(shape)}-{'bias' if bias else 'nobias'}", tbf.linear, F.linear,
                          lambda shape=shape, bias=bias: (torch.randn(shape, requires_grad=True),
                                                          torch.randn(6, 5, requires_grad=True),
                                                          torch.randn(6, requires_grad=True) if bias else None),
                          checks=(FLOAT64,)))
CASES += [
    Case("linear.linear-2x3x5-bias", tbf.linear, F.linear,
         lambda: (torch.randn(2, 3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True),
                  torch.randn(4, requires_grad=True)), checks=(GRADCHECK,)),
    Case("linear.linear-3x5-nobias", tbf.linear, F.linear,
         lambda: (torch.randn(3, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True), None),
         checks=(GRADCHECK,)),
    Case("linear.linear-8x32", tbf.linear, F.linear,
         lambda: (torch.randn(8, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True),
                  torch.randn(16, requires_grad=True)), checks=(LOW,)),
]


# --- bilinear: z_o = a1ᵀ W_o a2 + b_o ---------------------------------------------------------------------
def bilinear_args(lead, bias=True, grads="xwb"):
    return (torch.randn(*lead, 5, requires_grad="x" in grads), torch.randn(*lead, 3, requires_grad="x" in grads),
            torch.randn(6, 5, 3, requires_grad="w" in grads),
            torch.randn(6, requires_grad="b" in grads) if bias else None)


for lead in [(), (4,), (2, 3), (2, 1, 3), (0,)]:  # leading dims of both inputs
    for bias in (True, False):
        CASES.append(Case(f"linear.bilinear-{shape_id(lead)}-{'bias' if bias else 'nobias'}", tbf.bilinear,
                          F.bilinear, lambda lead=lead, bias=bias: bilinear_args(lead, bias), checks=(FLOAT64,)))
CASES += [
    Case("linear.bilinear-2x3-bias", tbf.bilinear, F.bilinear, lambda: bilinear_args((2, 3)), checks=(GRADCHECK,)),
    Case("linear.bilinear-4-nobias", tbf.bilinear, F.bilinear, lambda: bilinear_args((4,), bias=False),
         checks=(GRADCHECK,)),
    Case("linear.bilinear-0d-bias", tbf.bilinear, F.bilinear, lambda: bilinear_args(()), checks=(GRADCHECK,)),
    Case("linear.bilinear-16", tbf.bilinear, F.bilinear,
         lambda: (torch.randn(16, 24, requires_grad=True), torch.randn(16, 20, requires_grad=True),
                  torch.randn(12, 24, 20, requires_grad=True) / 5, torch.randn(12, requires_grad=True)),
         checks=(LOW,)),
]


# --- the linear family as torch ops: matmul (every broadcasting case), mm, bmm, addmm -------------------------
def leaves(*shapes):
    return tuple(torch.randn(s, requires_grad=True) for s in shapes)


MATMUL_SHAPES = [  # every broadcasting case of torch.matmul
    ((4,), (4,)), ((4,), (4, 5)), ((4,), (2, 3, 4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4,)),
    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
    ((1, 3, 4), (2, 4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 2, 3, 4), (4,)),
]
for a, b in MATMUL_SHAPES:
    CASES.append(Case(f"linear.matmul-{shape_id(a)}@{shape_id(b)}", tbf.matmul, torch.matmul,
                      lambda a=a, b=b: leaves(a, b), checks=(FLOAT64, GRADCHECK)))
for a, b in [((4,), (4, 5)), ((2, 8, 16), (16, 8)), ((8, 16), (3, 16, 8))]:
    CASES.append(Case(f"linear.matmul-{shape_id(a)}@{shape_id(b)}", tbf.matmul, torch.matmul,
                      lambda a=a, b=b: leaves(a, b), checks=(LOW,)))
CASES += [
    Case("linear.mm-3x4@4x5", tbf.mm, torch.mm, lambda: leaves((3, 4), (4, 5)), checks=(FLOAT64,)),
    Case("linear.bmm-2x3x4@2x4x5", tbf.bmm, torch.bmm, lambda: leaves((2, 3, 4), (2, 4, 5)),
         checks=(FLOAT64, GRADCHECK)),
    Case("linear.addmm-5+3x4@4x5", tbf.addmm, torch.addmm, lambda: leaves((5,), (3, 4), (4, 5)),
         {"beta": 0.5, "alpha": 2.0}, checks=(GRADCHECK,)),
]
for M in [(3, 5), (5,), (1, 5), (3, 1), ()]:
    for beta, alpha in [(1, 1), (0.5, -2.0), (0, 1)]:
        CASES.append(Case(f"linear.addmm-{shape_id(M)}+3x4@4x5-beta{beta}-alpha{alpha}", tbf.addmm, torch.addmm,
                          lambda M=M: leaves(M, (3, 4), (4, 5)), {"beta": beta, "alpha": alpha},
                          checks=(FLOAT64, LOW), low_dtypes=(torch.bfloat16,)))
