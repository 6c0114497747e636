"""δ formulas of the tensor operations models run outside torch.nn layers (torchbp.functional.pointwise,
reduction, indexing), as ``manual_backward()`` routes them. The common matrix (tests/cases/tensor_ops.py)
checks every op in float64 (rel 1e-10, and that the δ Function really ran), gradcheck / gradgradcheck, float32
and bfloat16 under the oracle rule, autocast, per-example gradients under vmap, and dims out of range refused;
here: broadcasting, non-contiguous, 0-d and empty inputs, calls that stay native, model blocks built of tensor
ops."""
from __future__ import annotations

import torch

import torchbp
from cases.tensor_ops import R, g, routed
from util import assert_matches_native


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
