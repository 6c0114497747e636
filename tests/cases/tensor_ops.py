"""The tensor operations models run outside torch.nn layers (torchbp.functional.pointwise, reduction, indexing),
as ``manual_backward()`` routes them: torch functions, Tensor methods, operators and in-place variants. Each case
also asserts that a δ Function really ran (a DeltaFunction node in the graph), never a silent native fallback."""
import torch

import torchbp
from cases import FLOAT64, GRADCHECK, LOW, ROUTE, SWEEP, VMAP, Bad, Case, shape_id

g = torch.Generator().manual_seed(0)


def R(*shape, positive=False, grad=True):
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    if positive:
        t = t.abs() + 0.5
    return t.requires_grad_(grad)


def routed(fn):
    def f(*args, **kwargs):
        with torchbp.manual_backward():
            return fn(*args, **kwargs)
    return f


def _clone(x):  # a non-leaf copy, for in-place ops
    return x * 1


idx = torch.tensor([2, 0, 2])
# name, fn, args (float64 leaves, made once), whether native supports double backward
TABLE = [
    ("add", lambda a, b: a + b, (R(3, 4), R(4)), True),
    ("add_alpha", lambda a, b: torch.add(a, b, alpha=2.5), (R(3, 4), R(3, 1)), True),
    ("radd_scalar", lambda a: 2 + a, (R(3, 4),), True),
    ("sub", lambda a, b: a - b, (R(3, 4), R(1, 4)), True),
    ("rsub", lambda a: 2 - a, (R(3, 4),), True),
    ("mul", lambda a, b: a * b, (R(2, 3, 4), R(3, 1)), True),
    ("mul_scalar", lambda a: a * 3.0, (R(3, 4),), True),
    ("div", lambda a, b: a / b, (R(3, 4), R(4, positive=True)), True),
    ("rdiv", lambda a: 1 / a, (R(3, 4, positive=True),), True),
    ("pow_scalar", lambda a: a ** 2, (R(3, 4),), True),
    ("pow_fraction", lambda a: torch.pow(a, 1.5), (R(3, 4, positive=True),), True),
    ("pow_tensor", lambda a, b: a ** b, (R(3, 4, positive=True), R(4)), True),
    ("rpow", lambda a: 2 ** a, (R(3, 4),), True),
    ("neg", lambda a: -a, (R(3, 4),), True),
    ("sqrt", torch.sqrt, (R(3, 4, positive=True),), True),
    ("rsqrt", torch.rsqrt, (R(3, 4, positive=True),), True),
    ("exp", lambda a: a.exp(), (R(3, 4),), True),
    ("log", torch.log, (R(3, 4, positive=True),), True),
    ("abs", lambda a: abs(a), (R(3, 4),), True),
    ("reciprocal", torch.reciprocal, (R(3, 4, positive=True),), True),
    ("square", torch.square, (R(3, 4),), True),
    ("sin", torch.sin, (R(3, 4),), True),
    ("cos", torch.cos, (R(3, 4),), True),
    ("log1p", torch.log1p, (R(3, 4, positive=True),), True),
    ("expm1", torch.expm1, (R(3, 4),), True),
    ("erf", torch.erf, (R(3, 4),), True),
    ("clamp", lambda a: a.clamp(-0.5, 0.7), (R(3, 4),), True),
    ("clamp_min", lambda a: torch.clamp_min(a, 0.1), (R(3, 4),), True),
    ("clamp_tensor", lambda a, lo: torch.clamp(a, min=lo), (R(3, 4), R(4)), True),
    ("where", lambda a, b: torch.where(a > 0, a, b), (R(3, 4), R(4)), True),
    ("where_scalar", lambda a: torch.where(a > 0, a, 0.0), (R(3, 4),), True),
    ("masked_fill", lambda a: a.masked_fill(a > 0.5, -1e4), (R(3, 4),), True),
    ("maximum", torch.maximum, (R(3, 4), R(4)), True),
    ("minimum", torch.minimum, (R(3, 4), R(3, 1)), True),
    ("sum", lambda a: a.sum(), (R(3, 4),), True),
    ("sum_dims", lambda a: torch.sum(a, (0, 2), keepdim=True), (R(2, 3, 4),), True),
    ("mean", lambda a: a.mean(-1), (R(3, 4),), True),
    ("var", lambda a: a.var(1, keepdim=True), (R(3, 4),), True),
    ("var_correction", lambda a: torch.var(a, dim=0, correction=0), (R(3, 4),), True),
    ("std", lambda a: a.std(), (R(3, 4),), True),
    ("norm", lambda a: a.norm(dim=-1, keepdim=True), (R(3, 4),), True),
    ("norm_p3", lambda a: torch.norm(a, p=3, dim=0), (R(3, 4),), True),
    ("vector_norm_1", lambda a: torch.linalg.vector_norm(a, 1, -1), (R(3, 4),), True),
    ("amax", lambda a: a.amax(1), (R(3, 4),), True),
    ("amin_ties", lambda a: torch.amin(torch.floor(a.detach()) + a * 0, 1), (R(3, 4),), True),
    ("max_dim", lambda a: a.max(1), (R(3, 4),), True),
    ("min_all", lambda a: a.min(), (R(3, 4),), True),
    ("logsumexp", lambda a: torch.logsumexp(a, 1), (R(3, 4),), True),
    ("cumsum", lambda a: a.cumsum(1), (R(3, 4),), True),
    ("prod", lambda a: a.prod(1), (R(3, 4),), True),
    ("prod_empty_dim", lambda a: a.prod(0), (R(0, 3),), True),
    ("cat", lambda a, b: torch.cat([a, b], 1), (R(3, 4), R(3, 2)), True),
    ("stack", lambda a, b: torch.stack([a, b], -1), (R(3, 4), R(3, 4)), True),
    ("index_tensor", lambda a: a[idx], (R(3, 4),), True),
    ("index_mixed", lambda a: a[:, idx], (R(3, 4),), True),
    ("index_mask", lambda a: a[a.detach() > 0], (R(3, 4),), True),
    ("gather", lambda a: a.gather(1, torch.tensor([[0, 1], [3, 3], [2, 0]])), (R(3, 4),), True),
    ("take_along_dim", lambda a: torch.take_along_dim(a, torch.tensor([[0], [3], [2]]), 1), (R(3, 4),), True),
    ("take_along_dim_broadcast", lambda a: torch.take_along_dim(a, torch.tensor([[-1, 0]]), 1), (R(5, 5),), True),
    ("index_select", lambda a: a.index_select(0, idx), (R(3, 4),), True),
    ("scatter", lambda a, s: a.scatter(1, torch.tensor([[0], [2], [1]]), s), (R(3, 4), R(3, 1)), True),
    ("scatter_add", lambda a, s: torch.scatter_add(a, 1, torch.tensor([[0, 0], [2, 1], [1, 1]]), s),
     (R(3, 4), R(3, 2)), True),
    ("roll", lambda a: torch.roll(a, (1, -2), (0, 1)), (R(3, 4),), True),
    ("roll_flat", lambda a: a.roll(5), (R(3, 4),), True),
    ("flip", lambda a: a.flip(1), (R(3, 4),), True),
    ("repeat", lambda a: a.repeat(2, 1, 3), (R(3, 4),), True),
    ("tril", lambda a: a.tril(-1), (R(4, 4),), True),
    ("triu", lambda a: torch.triu(a, 1), (R(4, 4),), True),
    ("einsum", lambda a, b: torch.einsum("bij,jk->bik", a, b), (R(2, 3, 4), R(4, 5)), True),
    ("einsum_sum_letter", lambda a, b: torch.einsum("ij,k->i", a, b), (R(3, 4), R(2)), True),
    ("weight_norm", lambda v, w: torch._weight_norm(v, w, 0), (R(3, 4), R(3, 1, positive=True)), True),
    ("weight_norm_dim2", lambda v, w: torch._weight_norm(v, w, 2), (R(2, 3, 4), R(1, 1, 4, positive=True)), True),
    # in place
    ("add_", lambda a, b: _clone(a).add_(b, alpha=0.5), (R(3, 4), R(4)), True),
    ("iadd", lambda a, b: _iadd(_clone(a), b), (R(3, 4), R(4)), True),
    ("sub_", lambda a, b: _clone(a).sub_(b), (R(3, 4), R(4)), True),
    ("mul_", lambda a, b: _clone(a).mul_(b), (R(3, 4), R(4)), True),
    ("div_", lambda a, b: _clone(a).div_(b), (R(3, 4), R(4, positive=True)), True),
    ("pow_", lambda a: _clone(a).pow_(3), (R(3, 4),), True),
    ("tanh_", lambda a: _clone(a).tanh_(), (R(3, 4),), True),
    ("sigmoid_", lambda a: _clone(a).sigmoid_(), (R(3, 4),), True),
    ("torch.tanh_", lambda a: torch.tanh_(_clone(a)), (R(3, 4),), True),
    ("exp_", lambda a: _clone(a).exp_(), (R(3, 4),), True),
    ("clamp_", lambda a: _clone(a).clamp_(min=-0.3), (R(3, 4),), True),
    ("masked_fill_", lambda a: _clone(a).masked_fill_(a.detach() < 0, 0.0), (R(3, 4),), True),
    ("addmm_", lambda m, a, b: _clone(m).addmm_(a, b), (R(3, 5), R(3, 4), R(4, 5)), True),
    ("inplace_on_view", lambda a, b: _inplace_view(a, b), (R(3, 4), R(4)), True),
]


def _iadd(a, b):
    a += b
    return a


def _inplace_view(a, b):
    base = a * 1
    base[1].mul_(b)  # an in-place δ op on a view: autograd rebases the base
    return base


CASES = []
# per example (vmap over dim 0) these lose the dim they name, or their operands' shapes no longer fit: both sides
# refuse (weight_norm's g no longer fits v: torch's own _weight_norm then crashes under vmap)
NO_VMAP = {"sum_dims", "var", "amax", "amin_ties", "max_dim", "logsumexp", "cumsum", "prod", "prod_empty_dim", "cat",
           "stack", "index_mixed", "gather", "take_along_dim", "take_along_dim_broadcast", "scatter",
           "scatter_add", "roll", "flip", "einsum", "einsum_sum_letter", "weight_norm", "weight_norm_dim2",
           "addmm_", "inplace_on_view"}


def _leaves(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) for a in args]


for name, fn, args, _double in TABLE:
    checks = list(SWEEP[FLOAT64])
    if name != "amin_ties":  # ties by construction: a subgradient, which finite differences cannot check
        checks += SWEEP[GRADCHECK]
    if name not in ("index_mask", "masked_fill_", "amin_ties"):  # the mask / ties depend on the rounded values
        checks += SWEEP[LOW]
    CASES.append(Case(f"tensor_ops.{name}", routed(fn), fn, lambda args=args: _leaves(args), checks=tuple(checks),
                      skip={ROUTE: "ours is native's call routed: FLOAT64 (with delta_ran) is the route check",
                            **({VMAP: "per example the op's dims or operands no longer fit"} if name in NO_VMAP
                               else {VMAP: "a data-dependent shape: vmap refuses it"} if name == "index_mask"
                               else {})},
                      low_dtypes=(torch.float32, torch.bfloat16), devices=("cpu",), delta_ran=True))


# --- bad inputs: a dim out of range is refused as torch refuses it, never wrapped round onto another dim ----------
def _bad_dim(name, fn, shape, match):
    return Bad(f"tensor_ops.{name}", routed(fn), fn,
               lambda: (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True),), match)


BAD = [
    _bad_dim("sum-dim-2", lambda a: a.sum(2), (3, 4), r"torchbp.functional.sum: dim 2 is out of range .*\[3, 4\]"),
    _bad_dim("sum-dims-neg", lambda a: torch.sum(a, (-3, 0)), (3, 4), "torchbp.functional.sum: dim -3 is out of range"),
    _bad_dim("sum-0d", lambda a: a.sum(1), (), r"torchbp.functional.sum: dim 1 is out of range .* \[-1, 0\]"),
    _bad_dim("mean", lambda a: a.mean(1), (4,), "torchbp.functional.mean: dim 1 is out of range"),
    _bad_dim("var", lambda a: a.var(1), (4,), "torchbp.functional.var: dim 1 is out of range"),
    _bad_dim("std", lambda a: a.std(dim=-3), (3, 4), "torchbp.functional.std: dim -3 is out of range"),
    _bad_dim("norm", lambda a: a.norm(dim=2), (3, 4), "torchbp.functional.norm: dim 2 is out of range"),
    _bad_dim("vector_norm", lambda a: torch.linalg.vector_norm(a, 1, 2), (3, 4),
             "torchbp.functional.vector_norm: dim 2 is out of range"),
    _bad_dim("amax", lambda a: a.amax(1), (4,), "torchbp.functional.amax: dim 1 is out of range"),
    _bad_dim("amin", lambda a: torch.amin(a, -2), (4,), "torchbp.functional.amin: dim -2 is out of range"),
    _bad_dim("logsumexp", lambda a: torch.logsumexp(a, 5), (3, 4),
             "torchbp.functional.logsumexp: dim 5 is out of range"),
]

# weight_norm's g: one value per slice of v along dim. torch reads a g of another size flat, past its end or
# short of it, and returns a weight of v's shape without a word (native None: nothing to refuse there)
_wn = lambda v, g: torch._weight_norm(v, g, 0)  # noqa: E731
BAD += [Bad(f"tensor_ops.weight_norm-g{shape_id(gs)}", routed(_wn), None,
            lambda gs=gs: (torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
                           torch.rand(gs, dtype=torch.float64, requires_grad=True)),
            r"torchbp.functional.torch._weight_norm: g has \d+ elements but v of shape \[3, 4\] has 3 slices",
            why="torch's kernel reads g flat, past its end")
        for gs in [(4, 1), (1, 4), (1, 1)]]
