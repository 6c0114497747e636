"""Elementwise arithmetic and math on tensors: ``a + b``, ``a * b``, ``x.pow(2)``, ``torch.rsqrt``, ``where``, ...

The ops a model runs outside torch.nn layers (RMSNorm's ``x * rsqrt(mean(x²) + ε) * w``, a layer scale
``γ * x``, a position embedding ``x + p``). Each op states ``f`` (the native op: same values) and ``grads``:
δ_input = δ ⊙ ∂f/∂input, the derivation's δ ⊙ f'(z), one factor per operand; an operand that was broadcast
gets its δ summed back to its own shape (``unbroadcast``, shared by every family). Python numbers and
tensors that need no gradient are constants. In-place variants (``x.mul_(y)``, ``x += y``, ``x.tanh_()``)
run the same formula through one in-place Function (``_InplaceOf``).
"""
from __future__ import annotations

import math
import types

import torch

from ._common import DeltaFunction, _functorch_active, check, check_inplace_target, unbroadcast

_T = torch.Tensor
_Size = torch.Size


def _is_t(a) -> bool:
    return isinstance(a, torch.Tensor)


def _calling(fn):
    def forward(*args):
        return fn(*args)
    return forward


class _Elementwise(DeltaFunction):
    """out = f(*args); backward: ``grads(δ, out, args, needs)`` gives each operand's δ (un-reduced);
    ``uses_inputs`` / ``uses_output`` say what backward reads (only that is saved)."""

    uses_inputs = True
    uses_output = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "f" not in cls.__dict__:
            return

        f, uses_inputs, uses_output = cls.__dict__["f"], cls.uses_inputs, cls.uses_output
        f = f.__func__ if isinstance(f, staticmethod) else f
        if not isinstance(f, types.FunctionType):  # a builtin (torch.exp): forward needs a signature to bind
            f = _calling(f)

        # Runs on every routed call: one pass over the inputs. ``ctx.meta`` holds each tensor input's shape
        # (where backward reads the tensor from the saved ones and sums its δ back to that shape) and each
        # other input as given (numbers, None: no input of these ops is a torch.Size).
        def setup_context(ctx, inputs, output):
            ctx.meta = tuple([a.shape if isinstance(a, _T) else a for a in inputs])
            if uses_inputs:
                ctx.save_for_backward(*[a for a in inputs if isinstance(a, _T)], output if uses_output else None)
            else:
                ctx.save_for_backward(output if uses_output else None)

        def backward(ctx, delta):
            *saved, out = ctx.saved_tensors
            meta, needs = ctx.meta, ctx.needs_input_grad
            if uses_inputs:
                it = iter(saved)
                args = [next(it) if type(m) is _Size else m for m in meta]
            else:
                args = [None if type(m) is _Size else m for m in meta]
            grads = cls.grads(delta, out, args, needs)
            return tuple([None if g is None or not needs[i] else unbroadcast(g, meta[i]) for i, g in enumerate(grads)])

        cls.forward = staticmethod(f)
        cls.setup_context, cls.backward = staticmethod(setup_context), staticmethod(backward)


# --- binary arithmetic ----------------------------------------------------------------------------------

class Add(_Elementwise):
    """out = a + α b;  δ_a = δ,  δ_b = α δ."""

    uses_inputs = False
    f_ = staticmethod(lambda a, b, alpha: a.add_(b, alpha=alpha))

    @staticmethod
    def f(a, b, alpha):
        return torch.add(a, b, alpha=alpha) if isinstance(a, _T) else torch.add(b, a, alpha=1) if alpha == 1 \
            else torch.add(torch.as_tensor(a), b, alpha=alpha)

    @staticmethod
    def grads(d, out, args, needs):
        alpha = args[2]
        return d, (d if alpha == 1 else d * alpha) if needs[1] else None, None


class Sub(_Elementwise):
    """out = a − α b;  δ_a = δ,  δ_b = −α δ."""

    uses_inputs = False
    f_ = staticmethod(lambda a, b, alpha: a.sub_(b, alpha=alpha))

    @staticmethod
    def f(a, b, alpha):
        return torch.sub(a, b, alpha=alpha) if isinstance(a, _T) else torch.rsub(b, a, alpha=alpha)

    @staticmethod
    def grads(d, out, args, needs):
        alpha = args[2]
        return d, (-d if alpha == 1 else d * -alpha) if needs[1] else None, None


class Mul(_Elementwise):
    """out = a ⊙ b;  δ_a = δ ⊙ b,  δ_b = δ ⊙ a."""

    f_ = staticmethod(lambda a, b: a.mul_(b))

    @staticmethod
    def f(a, b):
        return torch.mul(a, b) if isinstance(a, _T) else torch.mul(b, a)

    @staticmethod
    def grads(d, out, args, needs):
        a, b = args
        return d * b if needs[0] else None, d * a if needs[1] else None


class Div(_Elementwise):
    """out = a / b;  δ_a = δ / b,  δ_b = −δ ⊙ (a / b) / b."""

    f_ = staticmethod(lambda a, b: a.div_(b))

    @staticmethod
    def f(a, b):
        return torch.div(a, b) if isinstance(a, _T) else torch.mul(torch.reciprocal(b), a)

    @staticmethod
    def grads(d, out, args, needs):
        a, b = args
        return d / b if needs[0] else None, -d * ((a / b) / b) if needs[1] else None


class Pow(_Elementwise):
    """out = aᵇ;  δ_a = δ ⊙ b a^(b−1),  δ_b = δ ⊙ aᵇ ln a  (0 where a = 0 and b ≥ 0, as the limit)."""

    f_ = staticmethod(lambda a, b: a.pow_(b))

    @staticmethod
    def f(a, b):
        return torch.pow(a, b)

    @staticmethod
    def grads(d, out, args, needs):
        a, b = args
        ga = gb = None
        if needs[0]:
            if _is_t(b):
                ga = torch.where(b == 0, 0.0, d * b * a.pow(b - 1))
            else:
                ga = d * 0 if b == 0 else d * (b * a.pow(b - 1))
        if needs[1]:
            out = torch.pow(a, b)
            if _is_t(a):
                gb = torch.where((a == 0) & (b >= 0), 0.0, d * out * a.log())
            else:
                gb = d * out * math.log(a) if a != 0 else torch.where(b >= 0, 0.0, d * out * -math.inf)
        return ga, gb


class Maximum(_Elementwise):
    """out = max(a, b);  δ goes to the larger operand, half to each where they are equal."""

    @staticmethod
    def f(a, b):
        return torch.maximum(a, b)

    @staticmethod
    def grads(d, out, args, needs):
        a, b = args
        tie = torch.where(a == b, d / 2, d)
        return (tie.masked_fill(a < b, 0) if needs[0] else None,
                tie.masked_fill(b < a, 0) if needs[1] else None)


class Minimum(_Elementwise):
    """out = min(a, b);  δ goes to the smaller operand, half to each where they are equal."""

    @staticmethod
    def f(a, b):
        return torch.minimum(a, b)

    @staticmethod
    def grads(d, out, args, needs):
        # maximum's rule with the comparisons reversed: δ_a is 0 where b < a, δ_b where a < b
        return Maximum.grads(d, out, args[::-1], needs)


class Where(_Elementwise):
    """out = c ? a : b;  δ_a = δ where c (0 elsewhere),  δ_b = δ where not c."""

    uses_inputs = True

    @staticmethod
    def f(c, a, b):
        return torch.where(c, a, b)

    @staticmethod
    def grads(d, out, args, needs):
        c = args[0]
        return (None, torch.where(c, d, 0.0) if needs[1] else None,
                torch.where(c, 0.0, d) if needs[2] else None)


class MaskedFill(_Elementwise):
    """out = m ? v : x;  δ_x = δ where not m,  δ_v = Σ δ where m (v a 0-d tensor)."""

    f_ = staticmethod(lambda x, m, v: x.masked_fill_(m, v))

    @staticmethod
    def f(x, m, v):
        return torch.masked_fill(x, m, v)

    @staticmethod
    def grads(d, out, args, needs):
        x, m, v = args
        return (d.masked_fill(m, 0) if needs[0] else None, None,
                torch.where(m, d, 0.0).sum() if needs[2] else None)


class Clamp(_Elementwise):
    """out = min(max(x, lo), hi);  δ_x = δ where lo ≤ x ≤ hi,  δ_lo = δ where x < lo (≤ hi),
    δ_hi = δ where max(x, lo) > hi."""

    f_ = staticmethod(lambda x, lo, hi: x.clamp_(lo, hi))

    @staticmethod
    def f(x, lo, hi):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def grads(d, out, args, needs):
        x, lo, hi = args
        inside = None
        if lo is not None:
            inside = x >= lo
        if hi is not None:
            inside = x <= hi if inside is None else inside & (x <= hi)
        gx = (d if inside is None else torch.where(inside, d, 0.0)) if needs[0] else None
        glo = ghi = None
        if needs[1]:
            below = x < lo if hi is None else (x < lo) & (lo <= hi)
            glo = torch.where(below, d, 0.0)
        if needs[2]:
            ghi = torch.where((x if lo is None else torch.maximum(x, lo)) > hi, d, 0.0)
        return gx, glo, ghi


# --- unary math: out = f(x), δ_x = δ ⊙ f'(x) ------------------------------------------------------------

class _Unary(_Elementwise):
    @classmethod
    def grads(cls, d, out, args, needs):
        return (cls.df(d, out, args[0]),)


class Neg(_Unary):
    """out = −x;  δ_x = −δ."""

    uses_inputs = False
    f = staticmethod(torch.neg)
    f_ = staticmethod(torch.neg_)
    df = staticmethod(lambda d, out, x: -d)


class Exp(_Unary):
    """out = eˣ;  δ_x = δ ⊙ out."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.exp)
    f_ = staticmethod(torch.exp_)
    df = staticmethod(lambda d, out, x: d * out)


class Log(_Unary):
    """out = ln x;  δ_x = δ / x."""

    f = staticmethod(torch.log)
    f_ = staticmethod(torch.log_)
    df = staticmethod(lambda d, out, x: d / x)


class Sqrt(_Unary):
    """out = √x;  δ_x = δ / (2 out)."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.sqrt)
    f_ = staticmethod(torch.sqrt_)
    df = staticmethod(lambda d, out, x: d / (2 * out))


class Rsqrt(_Unary):
    """out = 1/√x;  δ_x = −½ δ ⊙ out³."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.rsqrt)
    f_ = staticmethod(torch.rsqrt_)
    df = staticmethod(lambda d, out, x: -0.5 * d * out.pow(3))


class Reciprocal(_Unary):
    """out = 1/x;  δ_x = −δ ⊙ out²."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.reciprocal)
    f_ = staticmethod(torch.reciprocal_)
    df = staticmethod(lambda d, out, x: -d * (out * out))


class Square(_Unary):
    """out = x²;  δ_x = 2 δ ⊙ x."""

    f = staticmethod(torch.square)
    f_ = staticmethod(torch.square_)
    df = staticmethod(lambda d, out, x: d * (2 * x))


class Abs(_Unary):
    """out = |x|;  δ_x = δ ⊙ sign x."""

    f = staticmethod(torch.abs)
    f_ = staticmethod(torch.abs_)
    df = staticmethod(lambda d, out, x: d * x.sign())


class Sin(_Unary):
    """out = sin x;  δ_x = δ ⊙ cos x."""

    f = staticmethod(torch.sin)
    f_ = staticmethod(torch.sin_)
    df = staticmethod(lambda d, out, x: d * x.cos())


class Cos(_Unary):
    """out = cos x;  δ_x = −δ ⊙ sin x."""

    f = staticmethod(torch.cos)
    f_ = staticmethod(torch.cos_)
    df = staticmethod(lambda d, out, x: d * -x.sin())


class Log1p(_Unary):
    """out = ln(1 + x);  δ_x = δ / (1 + x)."""

    f = staticmethod(torch.log1p)
    f_ = staticmethod(torch.log1p_)
    df = staticmethod(lambda d, out, x: d / (x + 1))


class Expm1(_Unary):
    """out = eˣ − 1;  δ_x = δ ⊙ (out + 1)."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.expm1)
    f_ = staticmethod(torch.expm1_)
    df = staticmethod(lambda d, out, x: d * (out + 1))


class Erf(_Unary):
    """out = erf x;  δ_x = δ ⊙ (2/√π) e^(−x²)."""

    f = staticmethod(torch.erf)
    f_ = staticmethod(torch.erf_)
    df = staticmethod(lambda d, out, x: d * (2 / math.sqrt(math.pi)) * torch.exp(-x * x))


class Sigmoid(_Unary):
    """out = σ(x);  δ_x = δ ⊙ out (1 − out)  (here for ``x.sigmoid_()``; torch.sigmoid is the activation's)."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.sigmoid)
    f_ = staticmethod(torch.sigmoid_)
    df = staticmethod(lambda d, out, x: d * (1 - out) * out)


class Tanh(_Unary):
    """out = tanh x;  δ_x = δ ⊙ (1 − out²)  (here for ``x.tanh_()``; torch.tanh is the activation's)."""

    uses_inputs, uses_output = False, True
    f = staticmethod(torch.tanh)
    f_ = staticmethod(torch.tanh_)
    df = staticmethod(lambda d, out, x: d * (1 - out * out))


class Addmm(_Elementwise):
    """out = β M + α A B (here for ``M.addmm_(A, B)``; torch.addmm is the linear family's);
    δ_M = β δ,  δ_A = α δ Bᵀ,  δ_B = α Aᵀ δ."""

    f_ = staticmethod(lambda M, A, B, beta, alpha: M.addmm_(A, B, beta=beta, alpha=alpha))

    @staticmethod
    def f(M, A, B, beta, alpha):
        return torch.addmm(M, A, B, beta=beta, alpha=alpha)

    @staticmethod
    def grads(d, out, args, needs):
        M, A, B, beta, alpha = args
        return (d * beta if needs[0] else None, alpha * (d @ B.mT) if needs[1] else None,
                alpha * (A.mT @ d) if needs[2] else None, None, None)


# --- in place: x ← f(x, *args) ----------------------------------------------------------------------

class _InplaceOf(DeltaFunction):
    """x ← f(x, *args) in place, with f's own formula: ``op.grads(δ, out, (x_old, *args))``, where
    x_old is a copy of x taken before the write (only for an op whose δ reads its inputs)."""

    @staticmethod
    def forward(op, x, x_old, *args):
        return op.f_(x, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, x, x_old, *args = inputs
        ctx.mark_dirty(x)
        pos = [i for i, a in enumerate(args) if _is_t(a)]
        saved = [x_old] + [args[i] for i in pos] if op.uses_inputs else []
        ctx.save_for_backward(*saved, output if op.uses_output else None)
        ctx.op, ctx.pos = op, pos
        ctx.consts = [None if _is_t(a) else a for a in args]
        ctx.shapes = [x.shape] + [a.shape if _is_t(a) else None for a in args]

    @staticmethod
    def backward(ctx, delta):
        *saved, out = ctx.saved_tensors
        args = [None] + list(ctx.consts)
        if ctx.op.uses_inputs:
            args[0] = saved[0]
            for i, t in zip(ctx.pos, saved[1:]):
                args[i + 1] = t
        needs = (ctx.needs_input_grad[1],) + tuple(ctx.needs_input_grad[3:])
        grads = ctx.op.grads(delta, out, args, needs)
        grads = [unbroadcast(g, ctx.shapes[i]) if g is not None and needs[i] else None for i, g in enumerate(grads)]
        return (None, grads[0], None, *grads[1:])


def _inplace(op, x, *args):
    """``x.f_(*args)`` through the δ of f. A view that a custom Function returned is refused, as autograd
    refuses it; under torch.func (which cannot save an input as a Function's output) the out-of-place δ
    runs and the values are written back outside the graph, so the caller's tensor still changes."""
    if not _is_t(x):
        raise TypeError(f"in-place {op.__name__.lower()} needs a tensor, got {type(x).__name__}")
    check_inplace_target(op.__name__.lower() + "_", x)
    if _functorch_active is None or _functorch_active():
        out = op.apply(x.clone(), *args)
        with torch.no_grad():
            x.copy_(out)
        return out
    x_old = x.clone() if op.uses_inputs and any(_is_t(a) and a.requires_grad for a in args) or \
        (op.uses_inputs and x.requires_grad) else None
    return _InplaceOf.apply(op, x, x_old, *args)


# --- functional forms, with torch's signatures -----------------------------------------------------------

def _complex(*args) -> bool:
    for a in args:  # (a plain loop: runs on every routed call, any() over a generator costs twice as much)
        if isinstance(a, _T) and a.is_complex():
            return True
    return False


def _floating_out(*args) -> bool:
    """Whether the op computes in a floating dtype (a gradient can exist)."""
    return any(_is_t(a) and a.is_floating_point() for a in args)


def add(input, other, *, alpha=1, out=None):
    """δ twin of ``torch.add`` / ``a + b``: input + alpha · other."""
    if out is not None or _complex(input, other):
        return torch.add(input, other, alpha=alpha, out=out)
    return Add.apply(input, other, alpha)


def sub(input, other, *, alpha=1, out=None):
    """δ twin of ``torch.sub`` / ``a - b``: input − alpha · other."""
    if out is not None or _complex(input, other):
        return torch.sub(input, other, alpha=alpha, out=out)
    return Sub.apply(input, other, alpha)


def rsub(input, other, alpha=1):
    """δ twin of ``torch.rsub`` / ``2 - x``: other − alpha · input."""
    if _complex(input, other):
        return torch.rsub(input, other, alpha=alpha)
    return Sub.apply(other, input, alpha)


def mul(input, other, *, out=None):
    """δ twin of ``torch.mul`` / ``a * b``."""
    if out is not None or _complex(input, other):
        return torch.mul(input, other, out=out)
    return Mul.apply(input, other)


def div(input, other, *, rounding_mode=None, out=None):
    """δ twin of ``torch.div`` / ``a / b`` (true division; a rounded quotient has no gradient and stays native)."""
    if out is not None or rounding_mode is not None or _complex(input, other):
        return torch.div(input, other, rounding_mode=rounding_mode, out=out)
    return Div.apply(input, other)


def _rdiv(self, other):  # Tensor.__rdiv__: other / self
    return Div.apply(other, self)


def pow(input, exponent, *, out=None):
    """δ twin of ``torch.pow`` / ``x ** p`` / ``p ** x``."""
    if out is not None or _complex(input, exponent) or not _floating_out(input, exponent):
        return torch.pow(input, exponent, out=out)
    return Pow.apply(input, exponent)


def _rpow(self, other):  # Tensor.__rpow__: other ** self
    return pow(other, self)


def maximum(input, other, *, out=None):
    """δ twin of ``torch.maximum``."""
    if out is not None or _complex(input, other):
        return torch.maximum(input, other, out=out)
    return Maximum.apply(input, other)


def minimum(input, other, *, out=None):
    """δ twin of ``torch.minimum``."""
    if out is not None or _complex(input, other):
        return torch.minimum(input, other, out=out)
    return Minimum.apply(input, other)


def where(condition, input=None, other=None, *, out=None):
    """δ twin of ``torch.where(condition, input, other)`` (the one-argument form has no gradient)."""
    if input is None or out is not None or _complex(input, other):
        return torch.where(condition, input, other, out=out) if input is not None else torch.where(condition)
    return Where.apply(condition, input, other)


def masked_fill(input, mask, value):
    """δ twin of ``torch.masked_fill`` / ``Tensor.masked_fill``."""
    if _complex(input, value):
        return torch.masked_fill(input, mask, value)
    return MaskedFill.apply(input, mask, value)


def clamp(input, min=None, max=None, *, out=None):
    """δ twin of ``torch.clamp`` / ``clip``."""
    check(min is not None or max is not None, "clamp", "at least one of min and max must be given")
    if out is not None or _complex(input):
        return torch.clamp(input, min, max, out=out)
    return Clamp.apply(input, min, max)


def clamp_min(input, min):
    return clamp(input, min, None)


def clamp_max(input, max):
    return clamp(input, None, max)


def _unary(op):
    def fn(input, *, out=None):
        if out is not None or _complex(input):
            return op.f(input, out=out) if out is not None else op.f(input)
        return op.apply(input)
    fn.__name__ = fn.__qualname__ = op.__name__.lower()
    fn.__doc__ = f"δ twin of ``torch.{fn.__name__}``: {op.__doc__.splitlines()[0]}"
    return fn


neg, exp, log, sqrt, rsqrt, reciprocal, square, abs, sin, cos, log1p, expm1, erf = (
    _unary(op) for op in (Neg, Exp, Log, Sqrt, Rsqrt, Reciprocal, Square, Abs, Sin, Cos, Log1p, Expm1, Erf))


def _inplace_route(op, native, convert=None):
    """The routed ``x.f_(*args)``: the δ in-place Function, native for what has no gradient (complex)."""
    def fn(x, *args, **kwargs):
        if _complex(x, *args) or any(_is_t(v) and v.is_complex() for v in kwargs.values()):
            return native(x, *args, **kwargs)
        return _inplace(op, x, *(convert(*args, **kwargs) if convert else args))
    return fn


def _alpha_args(other, alpha=1):
    return other, alpha


def _clamp_args(min=None, max=None):
    return min, max


def _addmm_inplace(M, mat1, mat2, *, beta=1, alpha=1):
    if _complex(M, mat1, mat2):
        return M.addmm_(mat1, mat2, beta=beta, alpha=alpha)
    return _inplace(Addmm, M, mat1, mat2, beta, alpha)


def _div_inplace(x, other, *, rounding_mode=None):
    if rounding_mode is not None or _complex(x, other):
        return x.div_(other, rounding_mode=rounding_mode)
    return _inplace(Div, x, other)


_UNARY = {Neg: "neg", Exp: "exp", Log: "log", Sqrt: "sqrt", Rsqrt: "rsqrt", Reciprocal: "reciprocal",
          Square: "square", Abs: "abs", Sin: "sin", Cos: "cos", Log1p: "log1p", Expm1: "expm1", Erf: "erf"}

ROUTES = {
    torch.add: add, _T.add: add, _T.__add__: add, _T.__radd__: add, _T.__iadd__: None,
    torch.sub: sub, _T.sub: sub, _T.__sub__: sub, torch.subtract: sub, _T.subtract: sub,
    torch.rsub: rsub, _T.__rsub__: lambda self, other: rsub(self, other),
    torch.mul: mul, _T.mul: mul, _T.__mul__: mul, _T.__rmul__: mul, torch.multiply: mul, _T.multiply: mul,
    torch.div: div, _T.div: div, _T.__truediv__: div, torch.true_divide: div, _T.true_divide: div,
    torch.divide: div, _T.divide: div, _T.__rdiv__: _rdiv, _T.__rtruediv__: _rdiv,
    torch.pow: pow, _T.pow: pow, _T.__pow__: pow, _T.__rpow__: _rpow,
    torch.maximum: maximum, _T.maximum: maximum, torch.minimum: minimum, _T.minimum: minimum,
    torch.where: where, _T.where: lambda self, condition, other: where(condition, self, other),
    torch.masked_fill: masked_fill, _T.masked_fill: masked_fill,
    torch.clamp: clamp, _T.clamp: clamp, torch.clip: clamp, _T.clip: clamp,
    torch.clamp_min: clamp_min, _T.clamp_min: clamp_min, torch.clamp_max: clamp_max, _T.clamp_max: clamp_max,
    _T.__neg__: neg, _T.__abs__: abs,
    # in place
    _T.add_: _inplace_route(Add, _T.add_, _alpha_args), _T.sub_: _inplace_route(Sub, _T.sub_, _alpha_args),
    _T.mul_: _inplace_route(Mul, _T.mul_), _T.div_: _div_inplace, _T.addmm_: _addmm_inplace,
    _T.pow_: _inplace_route(Pow, _T.pow_), _T.masked_fill_: _inplace_route(MaskedFill, _T.masked_fill_),
    _T.clamp_: _inplace_route(Clamp, _T.clamp_, _clamp_args), _T.clip_: _inplace_route(Clamp, _T.clip_, _clamp_args),
    _T.sigmoid_: _inplace_route(Sigmoid, _T.sigmoid_), torch.sigmoid_: _inplace_route(Sigmoid, torch.sigmoid_),
    _T.tanh_: _inplace_route(Tanh, _T.tanh_), torch.tanh_: _inplace_route(Tanh, torch.tanh_),
}
del ROUTES[_T.__iadd__]  # `x += y` reaches the router as Tensor.add_
for _op, _name in _UNARY.items():
    _fn = globals()[_name]
    ROUTES[getattr(torch, _name)] = _fn
    ROUTES[getattr(_T, _name)] = _fn
    ROUTES[getattr(_T, _name + "_")] = _inplace_route(_op, getattr(_T, _name + "_"))
    if hasattr(torch, _name + "_"):
        ROUTES[getattr(torch, _name + "_")] = _inplace_route(_op, getattr(torch, _name + "_"))
ROUTES[torch.negative] = ROUTES[_T.negative] = neg
ROUTES[torch.absolute] = ROUTES[_T.absolute] = abs

__all__ = ["add", "sub", "rsub", "mul", "div", "pow", "maximum", "minimum", "where", "masked_fill", "clamp",
           "clamp_min", "clamp_max", "neg", "exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "abs", "sin",
           "cos", "log1p", "expm1", "erf"]
