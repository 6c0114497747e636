"""δ formulas of the tensor operations models run outside torch.nn layers (torchbp.functional.pointwise,
reduction, indexing), as ``manual_backward()`` routes them: torch functions, Tensor methods, operators and
in-place variants. Each against native autograd in float64 (rel 1e-10), gradcheck / gradgradcheck, float32
and bfloat16 under the oracle rule; broadcasting, non-contiguous, 0-d and empty inputs; and the δ Function
really ran (a DeltaFunction node in the graph), never a silent native fallback."""
from __future__ import annotations

import math

import pytest
import torch

import torchbp
from torchbp.functional import DeltaFunction
from util import assert_matches_native, gradchecks

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


def _delta_nodes(out) -> list[str]:
    """Names of the δ Functions among the autograd nodes reachable from ``out``."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    seen, stack, names = set(), [o.grad_fn for o in outs if isinstance(o, torch.Tensor)], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        cls = getattr(type(f), "_forward_cls", None)
        if isinstance(cls, type) and issubclass(cls, DeltaFunction):
            names.append(cls.__name__)
        stack.extend(n for n, _ in f.next_functions)
    return names


def _clone(x):  # a non-leaf copy, for in-place ops
    return x * 1


idx = torch.tensor([2, 0, 2])
# name, fn, args, whether native supports double backward (gradgradcheck)
CASES = [
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


IDS = [c[0] for c in CASES]


def _leaves(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) for a in args]


@pytest.mark.parametrize("name,fn,args,double", CASES, ids=IDS)
def test_float64_matches_native_and_delta_ran(name, fn, args, double):
    assert_matches_native(routed(fn), fn, _leaves(args))
    out = routed(fn)(*_leaves(args))
    assert _delta_nodes(out), f"{name}: no δ Function in the graph (native fallback)"


@pytest.mark.parametrize("name,fn,args,double", CASES, ids=IDS)
def test_gradcheck_and_gradgradcheck(name, fn, args, double):
    if name == "amin_ties":  # ties by construction: the finite differences see a kink
        pytest.skip("a subgradient at ties, which finite differences cannot check")
    gradchecks(routed(fn), _leaves(args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,fn,args,double", CASES, ids=IDS)
def test_low_precision_oracle_rule(name, fn, args, double, dtype):
    if name in ("index_mask", "masked_fill_", "amin_ties"):  # the mask / ties depend on the rounded values
        pytest.skip("data-dependent selection differs between dtypes")
    assert_matches_native(routed(fn), fn, _leaves(args), dtype=dtype)


def test_non_contiguous_broadcast_0d_and_empty():
    a = R(4, 3).detach().t().requires_grad_()        # non-contiguous
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)  # 0-d
    for fn, args in [(lambda a, s: a * s + s, (a, s)), (lambda a, s: (a / s).sum(0) - s, (a, s)),
                     (lambda a, s: torch.cat([a, a * s]).amax(0), (a, s)),
                     (lambda a, s: torch.where(a > 0, a, s), (a, s)),
                     (lambda s: (s * 2).exp(), (s,)), (lambda s: s.sum(), (s,))]:
        assert_matches_native(routed(fn), fn, list(args))
    e = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    for fn in [lambda e: e * 2 + 1, lambda e: e.sum(0), lambda e: e.mean(1), lambda e: torch.cat([e, e]),
               lambda e: e[torch.tensor([], dtype=torch.long)], lambda e: e.cumsum(0)]:
        assert_matches_native(routed(fn), fn, [e])


def test_untouched_calls_stay_native():
    """No graph, integer tensors, shape queries: not routed (and so as fast as native)."""
    x, i = R(3, 4), torch.arange(12).reshape(3, 4)
    with torchbp.manual_backward():
        with torch.no_grad():
            assert (x * 2).grad_fn is None
        assert type(i + 1) is torch.Tensor and (i + 1).grad_fn is None
        assert x.shape == (3, 4) and x.size(0) == 3
        y = x.detach() * 2
        assert y.grad_fn is None
        v = x[1:, 0]  # basic slicing: structure, a native view
        assert type(v.grad_fn).__name__.startswith("Select") or type(v.grad_fn).__name__.startswith("Slice")


def test_rmsnorm_layer_scale_class_token_position_bias_get_delta_gradients():
    """The modules of real models that compute with tensor ops: every parameter gradient from δ formulas."""
    from torchbp.checker.passes import coverage_walk

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rms_w = torch.nn.Parameter(torch.rand(8, dtype=torch.float64) + 0.5)
            self.gamma = torch.nn.Parameter(torch.full((8,), 0.5, dtype=torch.float64))
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8, dtype=torch.float64))
            self.pos = torch.nn.Parameter(torch.randn(1, 5, 8, dtype=torch.float64))
            self.table = torch.nn.Parameter(torch.randn(9, 2, dtype=torch.float64))
            self.register_buffer("rel", torch.randint(0, 9, (5 * 5,)))

        def forward(self, x):
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos   # class token, position
            var = x.to(torch.float32).double().pow(2).mean(-1, keepdim=True)              # RMSNorm (LLaMA)
            x = self.rms_w * (x * torch.rsqrt(var + 1e-6))
            x = x + self.gamma * torch.tanh(x)                                            # layer scale
            bias = self.table[self.rel].view(5, 5, 2).permute(2, 0, 1)                     # relative position bias
            return torch.einsum("bsd,hst->bhtd", x, bias.softmax(-1))

    m, x = Block(), R(2, 4, 8, grad=False)
    out = routed(m)(x)
    cov, _, reached = coverage_walk(out.sum(), list(m.parameters()))
    assert len(reached) == 5 and cov == reached
    v = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gs = torch.autograd.grad(out, list(m.parameters()), v)
    gn = torch.autograd.grad(m(x), list(m.parameters()), v)
    assert max(float((a - b).norm() / b.norm()) for a, b in zip(gs, gn)) <= 1e-10
    r = torchbp.audit(m, x)
    assert r.ok and r.coverage == 1.0, str(r)
