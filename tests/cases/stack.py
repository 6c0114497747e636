"""torchbp.functional.stack: runs of dense layers in one δ Function (DenseStack, what the nn.Sequential twin
runs), against native nn.Sequential. That the run is fused, hooks and patched forwards taking the per-layer path,
autocast's casts inside the run, in-place checks: tests/test_stack.py."""
import copy

import torch
import torch.nn as nn

import torchbp
from torchbp.functional import activation as A
from torchbp.functional.stack import dense_stack
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, shape_id

MODELS = {
    "relu": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)),
    "seed": lambda: nn.Sequential(*[m for a, b in ((6, 6), (6, 5), (5, 4), (4, 3))
                                    for m in (nn.Linear(a, b), nn.Sigmoid())]),  # the derivation's network, 6 inputs
    "mixed": lambda: nn.Sequential(nn.Linear(6, 7, bias=False), nn.Tanh(), nn.Linear(7, 7), nn.GELU(),
                                   nn.Linear(7, 5), nn.SiLU(), nn.Linear(5, 4), nn.LeakyReLU(0.2),
                                   nn.Linear(4, 3), nn.GELU(approximate="tanh")),
    "more": lambda: nn.Sequential(nn.Linear(6, 7), nn.SELU(), nn.Linear(7, 7), nn.CELU(0.7), nn.Linear(7, 5),
                                  nn.Mish(), nn.Linear(5, 5), nn.Hardswish(inplace=True), nn.Linear(5, 3),
                                  nn.Hardsigmoid()),
    "interrupted": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.0),
                                         nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 3), nn.Linear(3, 3)),
}


def pair(name, dtype=torch.float64):
    """(native, twin) of MODELS[name], the same parameters (seeded)."""
    torch.manual_seed(0)
    native = MODELS[name]().to(dtype)
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is torchbp.nn.Sequential
    return native, twin


def call(module):
    """module(x) as a function of (x, *parameters), so the matrix converts and compares them all."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (x,))
    f.__name__ = type(module).__module__.split(".")[0] + "." + type(module).__name__
    return f


def args(module, shape):
    return lambda: (torch.randn(shape, dtype=torch.float64, requires_grad=True),
                    *[p.detach().clone().requires_grad_() for p in module.parameters()])


CASES = []
for name in MODELS:
    native, twin = pair(name)
    for shape in [(5, 6), (2, 3, 6), (6,)]:
        CASES.append(Case(f"stack.Sequential[{name}]-{shape_id(shape)}", call(twin), call(native), args(native, shape),
                          checks=SWEEP[FLOAT64] + (SWEEP[LOW] if name == "mixed" and shape == (5, 6) else ()),
                          delta_ran=True, skip={"vmap": "a 1-D input: vmap leaves 0-d"} if len(shape) == 1 else {}))


def dense_stack_of_two(x, W0, b0, W1):
    return dense_stack(x, [(W0, b0, (A.Tanh, ())), (W1, None, (A.GELU, ("none",)))])


CASES.append(Case("stack.dense_stack[tanh,gelu]-3x3", dense_stack_of_two, None,
                  lambda: (torch.randn(3, 3, dtype=torch.float64, requires_grad=True),
                           torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
                           torch.randn(4, dtype=torch.float64, requires_grad=True),
                           torch.randn(2, 4, dtype=torch.float64, requires_grad=True)), checks=(GRADCHECK,)))

native32, twin32 = pair("relu", torch.float32)
BAD = [  # the per-layer path names the problem
    Bad("stack.Sequential-float64-input", twin32, native32, lambda: (torch.randn(5, 6, dtype=torch.float64),),
        "torchbp.functional.linear"),
    Bad("stack.Sequential-features", twin32, native32, lambda: (torch.randn(5, 7),), "torchbp.functional.linear"),
]
