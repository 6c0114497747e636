"""Activations a = f(z): the seed's da/dz factor, δ_z = δ_a ⊙ f'(z).

Each op states ``forward`` and ``delta(δ_a, t, *args) = δ_a ⊙ f'`` a few lines apart; ``t`` is the
output ``a`` when f' is cheaper from it (``save_output = True``), otherwise the input ``z``.

On CPU, torch.where is a slow scalar loop, so the piecewise f' (relu, leaky_relu, elu, softplus, hardtanh)
is built from sign / clamp / maximum there, with native's values at every kink; only where z (or δ) is
inf/NaN can the result differ (NaN · 0 where a select would pick a branch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import FP32_CUDA, DeltaFunction, _functorch_active, apply, check, check_tensor, scale_


class _Pointwise(DeltaFunction):
    """a = f(z, *args); backward δ_z = delta(δ_a, t, *args) with t = a or z (see ``save_output``)."""

    save_output = True

    def __init_subclass__(cls, **kwargs):
        # setup_context/backward are bound to each op class here rather than found through
        # ctx._forward_cls, which under vmap (generate_vmap_rule) is a generated wrapper class.
        super().__init_subclass__(**kwargs)

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output if cls.save_output else inputs[0])
            ctx.args = inputs[1:]

        def backward(ctx, delta):
            (t,) = ctx.saved_tensors
            return (cls.delta(delta, t, *ctx.args),) + (None,) * len(ctx.args)

        cls.setup_context, cls.backward = staticmethod(setup_context), staticmethod(backward)


class _Inplace(DeltaFunction):
    """f applied in place (``inplace=True`` modules): autograd is told (mark_dirty) and f' is taken
    from the output, through ``op.delta_out``."""

    @staticmethod
    def forward(op, z, *args):
        return op.forward_(z, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(inputs[1])
        ctx.save_for_backward(output)
        ctx.op, ctx.args = inputs[0], inputs[2:]

    @staticmethod
    def backward(ctx, delta):
        (a,) = ctx.saved_tensors
        return (None, ctx.op.delta_out(delta, a, *ctx.args)) + (None,) * len(ctx.args)


class Sigmoid(_Pointwise):
    """a = σ(z);  f'(z) = a ⊙ (1 − a)."""

    @staticmethod
    def forward(z):
        return torch.sigmoid(z)

    forward_ = staticmethod(torch.sigmoid_)

    @staticmethod
    def delta(g, a):
        return scale_(scale_(torch.rsub(a, 1), g), a)  # (δ_a (1 − a)) a, native's order; in place when safe


class Tanh(_Pointwise):
    """a = tanh(z);  f'(z) = 1 − a²."""

    @staticmethod
    def forward(z):
        return torch.tanh(z)

    forward_ = staticmethod(torch.tanh_)

    @staticmethod
    def delta(g, a):
        return scale_(1 - a * a, g)


class ReLU(_Pointwise):
    """a = max(z, 0);  f'(z) = [a > 0]."""

    @staticmethod
    def forward(z):
        return torch.relu(z)

    forward_ = staticmethod(torch.relu_)

    @staticmethod
    def delta(g, a):
        # [a > 0] = sign(a), as a ≥ 0. On CPU torch.where is a scalar, branchy loop: ~1 ms for 256×1024
        # floats vs 0.07 ms for g * sign(a) (scripts/bench.py MLP step: 1.095 → 1.03 of native).
        # Only where g or a is inf/NaN do they differ (0·inf = NaN where select gives 0).
        # On CUDA the select is one fast pass with a 1-byte mask: keep it.
        if a.device.type == "cpu":
            return scale_(a.sign(), g)
        return torch.where(a > 0, g, 0)

    delta_out = delta


class LeakyReLU(_Pointwise):
    """a = z for z > 0, s·z otherwise;  f'(z) = 1 for z > 0, s otherwise.

    f' reads [t > 0], the same for t = z and, when s ≥ 0, for t = a (the in-place case).
    On CPU, for 0 ≤ s ≤ 1, f' = max(sign t, s): the same values (s at t = 0) without torch.where.
    """

    save_output = False

    @staticmethod
    def forward(z, s):
        return F.leaky_relu(z, s)

    @staticmethod
    def forward_(z, s):
        return F.leaky_relu_(z, s)

    @staticmethod
    def delta(g, t, s):
        if t.device.type == "cpu" and 0 <= s <= 1:  # CPU torch.where is slow (see ReLU)
            return scale_(t.sign().clamp_(min=s), g)
        return torch.where(t > 0, g, g * s)

    delta_out = delta


class ELU(_Pointwise):
    """a = z for z > 0, α(eᶻ − 1) otherwise;  f'(z) = 1 for z > 0, α·eᶻ (= a + α) otherwise.

    On CPU, for 0 ≤ α ≤ 1, f' = max(sign z, α)·e^min(z, 0): the same values without torch.where.
    """

    save_output = False

    @staticmethod
    def forward(z, alpha):
        return F.elu(z, alpha)

    @staticmethod
    def forward_(z, alpha):
        return F.elu_(z, alpha)

    @staticmethod
    def delta(g, z, alpha):
        if z.device.type == "cpu" and 0 <= alpha <= 1:  # CPU torch.where is slow (see ReLU)
            e = torch.exp(z.clamp(max=0))
            return scale_(e, g) if alpha == 1 else scale_(scale_(z.sign().clamp_(min=alpha), g), e)
        return torch.where(z > 0, g, g * alpha * torch.exp(z))

    @staticmethod
    def delta_out(g, a, alpha):  # valid for α > 0, where a > 0 ⇔ z > 0
        return torch.where(a > 0, g, g * (a + alpha))


_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELU(_Pointwise):
    """a = z·Φ(z);  f'(z) = Φ(z) + z·φ(z).

    approximate="tanh": a = ½z(1 + tanh u), u = √(2/π)(z + 0.044715 z³);
    f'(z) = ½(1 + tanh u) + ½z(1 − tanh²u)·√(2/π)(1 + 3·0.044715 z²).
    """

    save_output = False

    @staticmethod
    def forward(z, approximate):
        return F.gelu(z, approximate=approximate)

    @staticmethod
    def delta(g, z, approximate):
        if approximate == "tanh":
            t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))
            df = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
        else:  # Φ(z) + z·φ(z) on two temporaries (erf_, exp_ in place: still differentiable twice)
            e = z.square().mul_(-0.5).exp_()
            df = (z * (1 / _SQRT_2)).erf_().add_(1).mul_(0.5).addcmul_(z, e, value=_INV_SQRT_2PI)
        return scale_(df, g)


class SiLU(_Pointwise):
    """a = z·σ(z);  f'(z) = σ(z)·(1 + z·(1 − σ(z)))."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.silu(z)

    @staticmethod
    def delta(g, z):
        s = torch.sigmoid(z)
        return g * s * (1 + z * (1 - s))


class Softplus(_Pointwise):
    """a = (1/β)·log(1 + e^{βz}), or z where βz > threshold;  f'(z) = σ(βz), or 1 there.

    On CPU f' = max(σ(βz), [βz > threshold]), with [βz > threshold] = max(sign(βz − threshold), 0).
    """

    save_output = False

    @staticmethod
    def forward(z, beta, threshold):
        return F.softplus(z, beta, threshold)

    @staticmethod
    def delta(g, z, beta, threshold):
        bz = z if beta == 1 else z * beta  # z·1 = z exactly: skip the pass
        if z.device.type == "cpu":  # CPU torch.where is slow (see ReLU)
            return scale_(torch.sigmoid(bz).maximum((bz - threshold).sign_().clamp_(min=0)), g)
        return torch.where(bz > threshold, g, g * torch.sigmoid(bz))


class Hardtanh(_Pointwise):
    """a = clamp(z, lo, hi);  f'(z) = [lo < z < hi] = [lo < a < hi].

    f' is read from z, as native does: in a low precision that cannot hold a bound (bf16 and 0.7), a
    just inside it and the clamped a just outside round to the same value. In place only a remains.
    On CPU [lo < t < hi] = max(sign(min(t − lo, hi − t)), 0), without torch.where.
    """

    save_output = False

    @staticmethod
    def forward(z, lo, hi):
        return F.hardtanh(z, lo, hi)

    @staticmethod
    def forward_(z, lo, hi):
        return F.hardtanh_(z, lo, hi)

    @staticmethod
    def delta(g, a, lo, hi):
        if a.dtype in (torch.float16, torch.bfloat16):
            # compared in float32, as native does: a half type would round a bound such as 0.7 first
            a = a.float()
            return g * ((a > lo) & (a < hi)).to(g.dtype)
        if a.device.type == "cpu":  # CPU torch.where is slow (see ReLU)
            return scale_(torch.minimum(a - lo, hi - a).sign_().clamp_(min=0), g)
        return torch.where((a > lo) & (a < hi), g, 0)

    delta_out = delta


class Softmax(_Pointwise):
    """a = softmax(z) along ``dim``;  δ_z = a ⊙ (δ_a − Σ_dim δ_a ⊙ a)  (the Jacobian diag(a) − a aᵀ)."""

    @staticmethod
    def forward(z, dim):
        return torch.softmax(z, dim)

    @staticmethod
    def delta(g, a, dim):
        return a * (g - (g * a).sum(dim, keepdim=True))


class LogSoftmax(_Pointwise):
    """a = z − log Σ eᶻ along ``dim``;  δ_z = δ_a − eᵃ ⊙ Σ_dim δ_a."""

    @staticmethod
    def forward(z, dim):
        return torch.log_softmax(z, dim)

    @staticmethod
    def delta(g, a, dim):
        return g - torch.exp(a) * g.sum(dim, keepdim=True)


# --- functional forms, with torch.nn.functional's signatures --------------------------------------

def _unary(op, fn, input, *args, inplace=False, policy=None):
    check_tensor(op, "input", input)
    if not input.is_floating_point():
        check(False, op, f"input must be floating point, got {input.dtype}")
    if inplace:
        check(hasattr(fn, "delta_out"), op, "inplace=True is not supported for this op")
        if (input._is_view() and isinstance(input.grad_fn, torch.autograd.function.BackwardCFunction)) \
                or _functorch_active is None or _functorch_active():
            # a view returned by a custom Function (a δ flatten) may not be modified in place under
            # autograd, and torch.func cannot save an input a Function returns as its output: take the
            # out-of-place δ path and write the values back outside the graph, so the caller's tensor
            # still changes (its version bumps, as an in-place op's would)
            out = fn.apply(input.clone(), *args)  # (a clone: what the δ saves must not change below)
            with torch.no_grad():
                input.copy_(out)
            return out
        return _Inplace.apply(fn, input, *args)
    return apply(fn, policy, input, *args) if policy else fn.apply(input, *args)


def sigmoid(input):
    return _unary("sigmoid", Sigmoid, input)


def tanh(input):
    return _unary("tanh", Tanh, input)


def relu(input, inplace=False):
    return _unary("relu", ReLU, input, inplace=inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    check(not inplace or negative_slope >= 0, "leaky_relu",
          f"inplace=True needs negative_slope >= 0 (f' is read from the output), got {negative_slope}")
    return _unary("leaky_relu", LeakyReLU, input, float(negative_slope), inplace=inplace)


def elu(input, alpha=1.0, inplace=False):
    check(not inplace or alpha > 0, "elu",
          f"inplace=True needs alpha > 0 (f' is read from the output), got {alpha}")
    return _unary("elu", ELU, input, float(alpha), inplace=inplace)


def gelu(input, approximate="none"):
    check(approximate in ("none", "tanh"), "gelu", f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary("gelu", GELU, input, approximate)


def silu(input, inplace=False):
    if not inplace:
        return _unary("silu", SiLU, input)
    # f' needs z, which in-place overwrites: keep a copy of z (as native silu_ does), write a back
    return input.copy_(_unary("silu", SiLU, input.clone()))


def softplus(input, beta=1.0, threshold=20.0):
    return _unary("softplus", Softplus, input, float(beta), float(threshold))


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    check(min_val < max_val, "hardtanh", f"min_val ({min_val}) must be less than max_val ({max_val})")
    return _unary("hardtanh", Hardtanh, input, float(min_val), float(max_val), inplace=inplace)


def relu6(input, inplace=False):
    return hardtanh(input, 0.0, 6.0, inplace)


def _softmax_dim(input, dim, op):
    if dim is None:  # torch's legacy implicit choice (it warns too)
        import warnings
        warnings.warn(f"Implicit dimension choice for {op} has been deprecated. "
                      "Change the call to include dim=X as an argument.", stacklevel=3)
        dim = 0 if input.dim() in (0, 1, 3) else 1
    check(-max(input.dim(), 1) <= dim < max(input.dim(), 1), op,
          f"dim {dim} is out of range for an input of shape {list(input.shape)}")
    return dim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input, dim, "softmax")
    if dtype is not None:
        input = input.to(dtype)
    return _unary("softmax", Softmax, input, dim, policy=FP32_CUDA)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input, dim, "log_softmax")
    if dtype is not None:
        input = input.to(dtype)
    return _unary("log_softmax", LogSoftmax, input, dim, policy=FP32_CUDA)


def _tensor_softmax(input, dim, dtype=None):  # torch.softmax / Tensor.softmax: dim is positional
    return softmax(input, dim, dtype=dtype)


def _tensor_log_softmax(input, dim, dtype=None):
    return log_softmax(input, dim, dtype=dtype)


ROUTES = {
    torch.sigmoid: sigmoid, torch.Tensor.sigmoid: sigmoid, F.sigmoid: sigmoid,
    torch.tanh: tanh, torch.Tensor.tanh: tanh, F.tanh: tanh,
    torch.relu: relu, torch.Tensor.relu: relu, F.relu: relu,
    torch.relu_: lambda input: relu(input, inplace=True),
    torch.Tensor.relu_: lambda input: relu(input, inplace=True),
    F.relu_: lambda input: relu(input, inplace=True),
    F.leaky_relu: leaky_relu, F.elu: elu, F.gelu: gelu, F.silu: silu, F.softplus: softplus,
    F.hardtanh: hardtanh, F.relu6: relu6,
    F.softmax: softmax, torch.softmax: _tensor_softmax, torch.Tensor.softmax: _tensor_softmax,
    F.log_softmax: log_softmax, torch.log_softmax: _tensor_log_softmax,
    torch.Tensor.log_softmax: _tensor_log_softmax,
}

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "hardtanh",
           "relu6", "softmax", "log_softmax"]
