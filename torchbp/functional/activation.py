"""Activations a = f(z): the derivation's da/dz factor, δ_z = δ_a ⊙ f'(z).

Each op states ``forward`` and ``delta(δ_a, t, *args) = δ_a ⊙ f'`` a few lines apart; ``t`` is the
output ``a`` when f' is cheaper from it (``save_output = True``), otherwise the input ``z``.

A piecewise f' is built from sign / clamp / maximum, with native's values at every kink, on every device.
Where f' is 0 on whole intervals (relu, hardtanh, threshold, the shrinks, hardsigmoid, hardswish) native
selects, so δ ⊙ f' is ``select_scale(δ, f')``: 0 there whatever δ holds (an inf δ gives 0, not NaN).
Where native multiplies (leaky_relu, elu, selu, celu, prelu: δ times the slope), so does the δ.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ._common import FP32_CUDA, LOWER, DeltaFunction, _functorch_active, apply, check, check_compatible, \
    check_inplace_target, check_tensor, compiling, fail, inplace_ok, scale_
from .fastpath.pointwise import gelu_scale, scale_pieces, select_scale


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
        return select_scale(g, a.sign())  # [a > 0] = sign(a), as a ≥ 0

    delta_out = delta


class LeakyReLU(_Pointwise):
    """a = z for z > 0, s·z otherwise;  f'(z) = 1 for z > 0, s otherwise.

    f' reads [t > 0], the same for t = z and, when s ≥ 0, for t = a (the in-place case).
    For 0 ≤ s ≤ 1, f' = max(sign t, s): the same values (s at t = 0) without a select.
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
        if 0 <= s <= 1:
            return scale_(t.sign().clamp_(min=s), g)
        return torch.where(t > 0, g, g * s)

    delta_out = delta


class ELU(_Pointwise):
    """a = z for z > 0, α(eᶻ − 1) otherwise;  f'(z) = 1 for z > 0, α·eᶻ (= a + α) otherwise.

    For 0 ≤ α ≤ 1, f' = max(sign z, α)·e^min(z, 0): the same values without a select.
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
        if 0 <= alpha <= 1:
            e = torch.exp(z.clamp(max=0))
            return scale_(e, g) if alpha == 1 else scale_(scale_(z.sign().clamp_(min=alpha), g), e)
        return torch.where(z > 0, g, g * alpha * torch.exp(z.clamp(max=0)))

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
    def df(z):
        """Φ(z) + z·φ(z), fresh (on two temporaries, in place, where no graph is recorded)."""
        if inplace_ok():
            e = z.square().mul_(-0.5).exp_().mul_(z)
            return torch.mul(z, 1 / _SQRT_2).erf_().add_(1).mul_(0.5).add_(e, alpha=_INV_SQRT_2PI)
        return (torch.erf(z * (1 / _SQRT_2)) + 1) * 0.5 + z * torch.exp(z * z * -0.5) * _INV_SQRT_2PI

    @staticmethod
    def df_tanh(z):
        t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)

    @staticmethod
    def delta(g, z, approximate):
        # δ ⊙ f'(z), f' taken in pieces on the CPU (fastpath.pointwise: no temporary of z's size)
        if approximate == "tanh":
            return scale_pieces(g, z, GELU.df_tanh)
        return gelu_scale(g, z, GELU.df)


class SiLU(_Pointwise):
    """a = z·σ(z);  f'(z) = σ(z)·(1 + z·(1 − σ(z)))."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.silu(z)

    @staticmethod
    def df(z):
        """σ(z)·(1 + z·(1 − σ(z))), fresh (on two temporaries, in place, where no graph is recorded)."""
        s = torch.sigmoid(z)
        if inplace_ok():
            return torch.rsub(s, 1).mul_(z).add_(1).mul_(s)
        return s * (1 + z * (1 - s))

    @staticmethod
    def delta(g, z):
        return scale_pieces(g, z, SiLU.df)


class Softplus(_Pointwise):
    """a = (1/β)·log(1 + e^{βz}), or z where βz > threshold;  f'(z) = σ(βz), or 1 there.

    f' = max(σ(βz), [βz > threshold]), with [βz > threshold] = max(sign(βz − threshold), 0).
    """

    save_output = False

    @staticmethod
    def forward(z, beta, threshold):
        return F.softplus(z, beta, threshold)

    @staticmethod
    def delta(g, z, beta, threshold):
        bz = z if beta == 1 else z * beta  # z·1 = z exactly: skip the pass
        return scale_(torch.sigmoid(bz).maximum((bz - threshold).sign_().clamp_(min=0)), g)


class Hardtanh(_Pointwise):
    """a = clamp(z, lo, hi);  f'(z) = [lo < z < hi] = [lo < a < hi].

    f' is read from z, as native does: in a low precision that cannot hold a bound (bf16 and 0.7), a
    just inside it and the clamped a just outside round to the same value. In place only a remains.
    [lo < t < hi] = max(sign(min(t − lo, hi − t)), 0), without a select.
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
            return select_scale(g, ((a > lo) & (a < hi)).to(g.dtype))
        return select_scale(g, torch.minimum(a - lo, hi - a).sign_().clamp_(min=0))

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


class Hardswish(_Pointwise):
    """a = z·relu6(z + 3)/6;  f'(z) = 0 for z ≤ −3, z/3 + ½ for −3 < z < 3, 1 for z ≥ 3 (native's
    values at the kinks ±3).

    With q = clamp(z, −3, 3)/3: f' = q + ½ − ½·trunc(q), the same values without a select (trunc(q) is
    ±1 only where q = ±1, at and beyond the kinks, and 0 inside: no value below 3 divides to 1).
    """

    save_output = False

    @staticmethod
    def forward(z):
        return F.hardswish(z)

    @staticmethod
    def delta(g, z):
        q = z.clamp(-3, 3).div_(3)
        return select_scale(g, torch.trunc(q).mul_(-0.5).add_(q).add_(0.5))


_SIXTH_F32 = float(torch.tensor(1 / 6, dtype=torch.float32))  # native's 1/6: a float32 constant


class Hardsigmoid(_Pointwise):
    """a = relu6(z + 3)/6;  f'(z) = [−3 < z < 3]/6.

    The 1/6 is native's float32 constant (0.16666667163…, 3e-8 off in float64): taken as is, so that a
    float64 audit agrees with native to rounding. [|z| < 3] = −min(sign(|z| − 3), 0).
    """

    save_output = False

    @staticmethod
    def forward(z):
        return F.hardsigmoid(z)

    @staticmethod
    def delta(g, z):
        return select_scale(g, z.abs().sub_(3).sign_().clamp_(max=0).mul_(-_SIXTH_F32))


class Mish(_Pointwise):
    """a = z·tanh(softplus(z));  f'(z) = tanh(sp) + z·σ(z)·(1 − tanh²(sp)), sp = softplus(z)."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.mish(z)

    @staticmethod
    def delta(g, z):
        t = torch.tanh(F.softplus(z))
        return g * (t + z * torch.sigmoid(z) * (1 - t * t))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


class SELU(_Pointwise):
    """a = λ·z for z > 0, λα(eᶻ − 1) otherwise;  f'(z) = λ for z > 0, λα·eᶻ (= a + λα) otherwise
    (λ = 1.0507…, α = 1.6733…).

    f' = λ·(α·e^min(z, 0) + (1 − α)·[z > 0]): the same values without a select.
    """

    save_output = False

    @staticmethod
    def forward(z):
        return torch.selu(z)

    @staticmethod
    def forward_(z):
        return torch.selu_(z)

    @staticmethod
    def delta(g, z):
        df = scale_(z.clamp(max=0).exp_(), _SELU_ALPHA).add_(z.sign().clamp_(min=0), alpha=1 - _SELU_ALPHA)
        return scale_(df.mul_(_SELU_SCALE), g)  # (exp's output, saved under create_graph, is not written)

    @staticmethod
    def delta_out(g, a):  # a > 0 ⇔ z > 0
        return torch.where(a > 0, g * _SELU_SCALE, g * (a + _SELU_SCALE * _SELU_ALPHA))


class CELU(_Pointwise):
    """a = max(0, z) + min(0, α(e^{z/α} − 1));  f'(z) = 1 for z > 0, e^{z/α} (= a/α + 1) otherwise.

    Both branches are f' = e^{min(z, 0)/α} (e^0 = 1 exactly), for any α ≠ 0; from the output,
    f' = min(a, 0)/α + 1, as a > 0 ⇔ z > 0 for any α ≠ 0: no select on any device.
    Native's f' takes 1/α from α rounded to float32 (derivatives.yaml: ``1.0/alpha.toFloat()``):
    (1/α')·α·e^{z/α'}, up to 2e-7 off where α is no float32 number (0.7); taken as is, so that a
    float64 audit agrees with native. From the output (in place) f' is exact; native's in-place celu
    refuses α < 0 (its elu_ backward needs a positive slope), the δ in place does not.
    """

    save_output = False

    @staticmethod
    def forward(z, alpha):
        return torch.celu(z, alpha)

    @staticmethod
    def forward_(z, alpha):
        return torch.celu_(z, alpha)

    @staticmethod
    def delta(g, z, alpha):
        k = 1 / _in_dtype(alpha, torch.float32)  # native's 1/α
        df = z.clamp(max=0).mul_(k).exp_()
        c = k * alpha  # native's factor on z ≤ 0: 1 where α is a float32 number (0.5, 1, 2, ...)
        if c != 1:
            df = df * z.sign().clamp_(min=0).mul_(1 - c).add_(c)  # c on z ≤ 0, 1 on z > 0
        return scale_(df, g)

    @staticmethod
    def delta_out(g, a, alpha):
        return scale_(a.clamp(max=0).div_(alpha).add_(1), g)


class LogSigmoid(_Pointwise):
    """a = log σ(z) = −softplus(−z);  f'(z) = 1 − σ(z) = σ(−z)."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.logsigmoid(z)

    @staticmethod
    def delta(g, z):
        return scale_(torch.neg(z).sigmoid_(), g)


class Softsign(_Pointwise):
    """a = z/(1 + |z|);  f'(z) = 1/(1 + |z|)²."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.softsign(z)

    @staticmethod
    def delta(g, z):
        r = z.abs().add_(1).reciprocal_()
        return scale_(scale_(r, r), g)


class Tanhshrink(_Pointwise):
    """a = z − tanh z;  f'(z) = 1 − (1 − tanh²z) = tanh²z."""

    save_output = False

    @staticmethod
    def forward(z):
        return F.tanhshrink(z)

    @staticmethod
    def delta(g, z):
        t = torch.tanh(z)
        return scale_(scale_(t, t), g)


@functools.lru_cache(maxsize=None)
def _in_dtype(x, dtype, down=False):
    """``x`` rounded to ``dtype`` (to nearest, or ``down`` to the largest value ≤ x), as a Python float."""
    t = torch.tensor(x, dtype=torch.float64).to(dtype)
    if down and float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def _threshold_of(th, dtype):
    """The value ``t`` of ``dtype`` with [z > t] = native's [z > th]: native compares in float64 for
    float64 and in float32 otherwise (z upcast, th rounded to float32); for a half type that is
    [z > t] with t the largest half value ≤ float32(th), without the upcast."""
    if dtype == torch.float64:
        return th
    th = _in_dtype(th, torch.float32)
    return th if dtype == torch.float32 else _in_dtype(th, dtype, down=True)


class Threshold(_Pointwise):
    """a = z for z > th, ``value`` otherwise;  f'(z) = [z > th] (0 at z = th, as native).

    [z > t] = max(sign(z − t), 0) (a difference of two values of one dtype is 0 only where they
    are equal, so its sign is exact).
    """

    save_output = False

    @staticmethod
    def forward(z, th, value):
        return F.threshold(z, th, value)

    @staticmethod
    def delta(g, z, th, value):
        t = _threshold_of(th, z.dtype)
        return select_scale(g, torch.sub(z, t).sign_().clamp_(min=0))


class Hardshrink(_Pointwise):
    """a = z for |z| > λ, 0 otherwise;  f'(z) = [|z| > λ] (0 at |z| = λ, as native).

    Read from the output: for λ ≥ 0, |z| > λ ⇔ a ≠ 0 (a is z or 0, exactly), so f' = |sign a| on
    every device and dtype, without a select; for λ < 0, f' = 1.
    """

    @staticmethod
    def forward(z, lambd):
        return F.hardshrink(z, lambd)

    @staticmethod
    def delta(g, a, lambd):
        return g if lambd < 0 else select_scale(g, a.sign().abs_())


class Softshrink(_Pointwise):
    """a = z − λ·sign(z) for |z| > λ, 0 otherwise;  f'(z) = [|z| > λ] (0 at |z| = λ).

    Read from z, with λ rounded to z's dtype as native compares (a is not enough: in a half type
    z = λ rounded gives a = z − λ ≠ 0, as native subtracts in float32). [|z| > λ] =
    max(sign(|z| − λ), 0), exact as in Threshold.
    """

    save_output = False

    @staticmethod
    def forward(z, lambd):
        return F.softshrink(z, lambd)

    @staticmethod
    def delta(g, z, lambd):
        lam = lambd if z.dtype == torch.float64 else _in_dtype(lambd, z.dtype)
        return select_scale(g, z.abs().sub_(lam).sign_().clamp_(min=0))


class GLU(DeltaFunction):
    """a = z₁ ⊙ σ(z₂), z = [z₁, z₂] halved along ``dim``;
    δ_z₁ = δ_a ⊙ σ(z₂),  δ_z₂ = δ_a ⊙ z₁ ⊙ σ(z₂)(1 − σ(z₂))."""

    @staticmethod
    def forward(z, dim):
        return F.glu(z, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        z1, z2 = z.chunk(2, ctx.dim)
        s = torch.sigmoid(z2)
        d1 = g * s
        return torch.cat([d1, d1 * z1 * (1 - s)], ctx.dim), None


class PReLU(DeltaFunction):
    """a = z for z > 0, w_c·z otherwise (w_c: the weight of z's channel, dim 1; one weight for all
    when it has one element or z has fewer than 2 dims);
    f'(z) = 1 for z > 0, w_c otherwise;  ∂J/∂w_c = Σ_{all but dim 1} δ_a ⊙ min(z, 0).

    min(z, 0) = z·[z ≤ 0] exactly, so ∂J/∂w needs no mask. f' = p + (1 − p)·w_c with
    p = [z > 0] = max(sign z, 0): exactly 1 or w_c, without a select.
    """

    @staticmethod
    def forward(z, w):
        return torch.prelu(z, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        z, w = ctx.saved_tensors
        shape = [1] * z.dim()
        if z.dim() > 1:
            shape[1] = w.numel()
        wb = w.reshape(shape)  # broadcast over z as native does
        gz = gw = None
        if ctx.needs_input_grad[0]:
            p = z.sign().clamp_(min=0)
            gz = scale_(scale_(torch.rsub(p, 1), wb).add_(p), g)
        if ctx.needs_input_grad[1]:
            gzw = g * z.clamp(max=0)
            if w.numel() == 1:
                gw = gzw.sum().reshape(w.shape)
            else:
                gw = gzw.sum([d for d in range(z.dim()) if d != 1]).reshape(w.shape)
        return gz, gw


class Softmin(_Pointwise):
    """a = softmax(−z) along ``dim``;  δ_z = −(softmax's δ_z for δ_a) = a ⊙ (Σ_dim δ_a ⊙ a − δ_a)."""

    @staticmethod
    def forward(z, dim):
        return torch.softmax(-z, dim)

    @staticmethod
    def delta(g, a, dim):
        return Softmax.delta(-g, a, dim)


# --- functional forms, with torch.nn.functional's signatures --------------------------------------

def _unary(op, fn, input, *args, inplace=False, policy=None):
    check_tensor(op, "input", input)
    if not input.is_floating_point():
        fail(op, f"input must be floating point, got {input.dtype}")
    if inplace:
        check_inplace_target(op + "_", input)
    if inplace and (compiling() or not hasattr(fn, "delta_out")):
        # f' needs z, which the output overwrites: the δ runs on a copy of z (native saves one too, e.g.
        # silu_) and the result is written back into ``input``. Also the path under torch.compile: dynamo
        # traces neither ``hasattr`` on a Function nor its ctx.mark_dirty (a graph break per activation),
        # and functionalisation turns the clone and copy back into one in-place write anyway.
        return input.copy_(_unary(op, fn, input.clone(), *args, policy=policy))
    if inplace:
        if _functorch_active is None or _functorch_active():
            # torch.func cannot save an input a Function returns as its output: take the out-of-place δ
            # path and write the values back outside the graph, so the caller's tensor still changes (its
            # version bumps, as an in-place op's would)
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
    return _unary("silu", SiLU, input, inplace=inplace)


def softplus(input, beta=1.0, threshold=20.0):
    return _unary("softplus", Softplus, input, float(beta), float(threshold))


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    if min_val > max_val:  # the type and message native gives (min_val == max_val: a constant, f' = 0)
        raise ValueError(f"torchbp.functional.hardtanh: min_val cannot be greater than max_val, got min_val "
                         f"{min_val} and max_val {max_val}")
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


def hardswish(input, inplace=False):
    return _unary("hardswish", Hardswish, input, inplace=inplace)


def hardsigmoid(input, inplace=False):
    # f' is not read from a: a bound of 1 is reached by rounding just inside z = 3
    return _unary("hardsigmoid", Hardsigmoid, input, inplace=inplace)


def mish(input, inplace=False):
    return _unary("mish", Mish, input, inplace=inplace)


def selu(input, inplace=False):
    return _unary("selu", SELU, input, inplace=inplace)


def celu(input, alpha=1.0, inplace=False):
    check(alpha != 0, "celu", "alpha cannot be 0 (a = α(e^{z/α} − 1) divides by it)")
    return _unary("celu", CELU, input, float(alpha), inplace=inplace)


def logsigmoid(input):
    return _unary("logsigmoid", LogSigmoid, input)


def softsign(input):
    return _unary("softsign", Softsign, input)


def tanhshrink(input):
    return _unary("tanhshrink", Tanhshrink, input)


def threshold(input, threshold, value, inplace=False):
    # in place f' is not read from a: a = value may lie on either side of the threshold
    return _unary("threshold", Threshold, input, float(threshold), float(value), inplace=inplace)


def hardshrink(input, lambd=0.5):
    return _unary("hardshrink", Hardshrink, input, float(lambd))


def softshrink(input, lambd=0.5):
    check(lambd >= 0, "softshrink", f"lambd must be >= 0, got {lambd}")
    return _unary("softshrink", Softshrink, input, float(lambd))


def glu(input, dim=-1):
    check_tensor("glu", "input", input)
    check(input.dim() > 0, "glu", "input must have at least 1 dim (it is halved along dim), got a 0-d tensor")
    check(-input.dim() <= dim < input.dim(), "glu", f"dim {dim} is out of range for an input of shape "
                                                     f"{list(input.shape)}")
    check(input.shape[dim] % 2 == 0, "glu", f"input's size along dim {dim} must be even to halve it, "
                                            f"got {input.shape[dim]}")
    return _unary("glu", GLU, input, dim)


def prelu(input, weight):
    check_tensor("prelu", "input", input)
    check_compatible("prelu", input=input, weight=weight)
    check(weight.dim() <= 1, "prelu", f"weight must be 0-d or 1-D, got shape {list(weight.shape)}")
    if weight.numel() != 1:
        check(input.dim() > 0, "prelu", "a 0-d input takes a weight of one element, "
                                         f"got {weight.numel()}")
        channels = input.shape[1] if input.dim() > 1 else 1
        check(weight.numel() == channels, "prelu",
              f"weight has {weight.numel()} elements but input has {channels} channels (dim 1; an input "
              f"of fewer than 2 dims has 1), input shape {list(input.shape)}")
    return apply(PReLU, LOWER, input, weight)


def softmin(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input, dim, "softmin")
    if dtype is not None:
        input = input.to(dtype)
    return _unary("softmin", Softmin, input, dim, policy=FP32_CUDA)


def _tensor_softmax(input, dim, dtype=None):  # torch.softmax / Tensor.softmax: dim is positional
    return softmax(input, dim, dtype=dtype)


def _tensor_log_softmax(input, dim, dtype=None):
    return log_softmax(input, dim, dtype=dtype)


def _inplace_of(fn):  # torch.selu_(input, ...) -> selu(input, ..., inplace=True)
    return lambda input, *args, **kwargs: fn(input, *args, inplace=True, **kwargs)


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
    F.hardswish: hardswish, F.hardsigmoid: hardsigmoid, F.mish: mish,
    F.selu: selu, torch.selu: selu, torch.selu_: _inplace_of(selu),
    F.celu: celu, torch.celu: celu, torch.celu_: _inplace_of(celu),
    F.logsigmoid: logsigmoid, F.softsign: softsign, F.tanhshrink: tanhshrink,
    F.threshold: threshold, torch.threshold: threshold,
    torch.threshold_: _inplace_of(threshold),
    torch.hardshrink: hardshrink, torch.Tensor.hardshrink: hardshrink, F.softshrink: softshrink,
    F.glu: glu, torch.prelu: prelu, torch.Tensor.prelu: prelu, F.softmin: softmin,
}

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "hardtanh",
           "relu6", "softmax", "log_softmax", "hardswish", "hardsigmoid", "mish", "selu", "celu", "logsigmoid",
           "softsign", "tanhshrink", "threshold", "hardshrink", "softshrink", "glu", "prelu", "softmin"]
