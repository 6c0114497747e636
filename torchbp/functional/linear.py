"""The affine layer of the derivation: z(l+1) = W(l) a(l) + b(l), batched as ``z = a @ W.T + b``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import LOWER, PROMOTE_CUDA, DeltaFunction, _autocast_state, apply, check, check_compatible, fail


class Linear(DeltaFunction):
    """z = a Wᵀ + b, ``a`` of shape (N, in) (``linear`` folds any leading dims into N).

    backward, with δ = ∂J/∂z arriving from the layer above:
      δ_a  = δ W          (the derivation's Σ_q W_{q←k} δ_q, before the activation's f')
      ∂J/∂W = δᵀ a        (the derivation's δ(l+1) a(l)ᵀ, summed over the batch)
      ∂J/∂b = Σ_batch δ   (the derivation's δ(l+1))
    """

    @staticmethod
    def forward(a, W, b):
        return F.linear(a, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, W, b = inputs
        need_a, need_W, need_b = ctx.needs_input_grad
        ctx.save_for_backward(a if need_W else None, W if need_a else None)

    @staticmethod
    def backward(ctx, delta):
        a, W = ctx.saved_tensors
        need_a, need_W, need_b = ctx.needs_input_grad  # need_b is False when b is None
        return (Linear.grad_a(delta, W) if need_a else None, Linear.grad_W(delta, a) if need_W else None,
                Linear.grad_b(delta) if need_b else None)

    # the three formulas, also the fused dense run's (functional.stack)
    @staticmethod
    def grad_a(delta, W):
        """δ_a = δ W."""
        return delta @ W

    @staticmethod
    def grad_W(delta, a):
        """∂J/∂W = δᵀ a."""
        return delta.t() @ a

    @staticmethod
    def grad_b(delta):
        """∂J/∂b = Σ_batch δ."""
        return delta.sum(0)


def linear(input, weight, bias=None):
    """δ twin of ``torch.nn.functional.linear``."""
    check_compatible("linear", input=input, weight=weight, bias=bias)
    # each shape read once: under manual_backward every tensor query is a call through the mode
    shape, wshape = input.shape, weight.shape
    if not (len(wshape) == 2 and len(shape) >= 1 and shape[-1] == wshape[1]
            and (bias is None or bias.shape == wshape[:1])):
        _linear_error(input, weight, bias)
    if len(shape) == 2:
        return apply(Linear, LOWER, input, weight, bias)
    # F.linear returns a view for other ranks; a view made inside a custom Function may not be modified
    # in place (an inplace ReLU after it would raise), so fold the leading dims outside the Function
    # (the leading size spelled out: -1 is ambiguous when the contracted dim is empty)
    out = apply(Linear, LOWER, input.reshape(math.prod(shape[:-1]), shape[-1]), weight, bias)
    return out.reshape(*shape[:-1], wshape[0])


def _linear_error(input, weight, bias):  # the messages are built only when a check fails
    check(weight.dim() == 2, "linear", f"weight must be 2-D (out_features, in_features), got shape {list(weight.shape)}")
    check(input.dim() >= 1 and input.shape[-1] == weight.shape[1], "linear",
          f"input has {input.shape[-1] if input.dim() else 0} features in its last dim (shape {list(input.shape)}) "
          f"but weight expects {weight.shape[1]} (shape {list(weight.shape)})")
    check(bias is None or tuple(bias.shape) == (weight.shape[0],), "linear",
          f"bias must have shape [{weight.shape[0]}], got {list(bias.shape) if bias is not None else None}")


class Bilinear(DeltaFunction):
    """z_o = a1ᵀ W_o a2 + b_o, ``a1`` of shape (N, n1), ``a2`` (N, n2), W (out, n1, n2) (``bilinear`` folds
    any leading dims into N): the affine layer whose weight for a1 is Σ_j W_{o,:,j} a2_j.

    backward, with δ = ∂J/∂z (N, out):
      δ_a1 = Σ_o δ_o W_o a2        (the derivation's Wᵀδ, with the weight a2 has chosen)
      δ_a2 = Σ_o δ_o W_oᵀ a1
      ∂J/∂W_o = Σ_batch δ_o a1 a2ᵀ  (the derivation's δ aᵀ, one outer product per output)
      ∂J/∂b = Σ_batch δ
    Each is one matmul over an (N, out, n) product of δ with an input, the size native's forward builds.
    """

    @staticmethod
    def forward(a1, a2, W, b):
        return F.bilinear(a1, a2, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a1, a2, W, b = inputs
        need_a1, need_a2, need_W, need_b = ctx.needs_input_grad
        ctx.save_for_backward(a1 if need_a2 or need_W else None, a2 if need_a1 or need_W else None,
                              W if need_a1 or need_a2 else None)
        ctx.W_shape = W.shape

    @staticmethod
    def backward(ctx, delta):
        a1, a2, W = ctx.saved_tensors
        need_a1, need_a2, need_W, need_b = ctx.needs_input_grad
        (o, n1, n2), N = ctx.W_shape, delta.shape[0]
        grad_a1 = grad_a2 = grad_W = None
        if need_a1:  # Σ_{o,j} (δ_o a2_j) W_{o,i,j}
            grad_a1 = (delta.unsqueeze(2) * a2.unsqueeze(1)).reshape(N, o * n2) @ W.transpose(1, 2).reshape(o * n2, n1)
        if need_a2 or need_W:
            d_a1 = (delta.unsqueeze(2) * a1.unsqueeze(1)).reshape(N, o * n1)  # δ_o a1_i, shared by both
            grad_a2 = d_a1 @ W.reshape(o * n1, n2) if need_a2 else None
            grad_W = (d_a1.t() @ a2).reshape(o, n1, n2) if need_W else None
        grad_b = delta.sum(0) if need_b else None
        return grad_a1, grad_a2, grad_W, grad_b


def bilinear(input1, input2, weight, bias=None):
    """δ twin of ``torch.nn.functional.bilinear`` (= ``torch.bilinear``)."""
    op = "bilinear"
    check_compatible(op, input1=input1, input2=input2, weight=weight, bias=bias)
    # one dtype, unless CUDA autocast's "promote" (PROMOTE_CUDA, in apply) makes it one
    promoting = input1.device.type == "cuda" and _autocast_state("cuda") is not None
    if not ((promoting or input1.dtype == input2.dtype == weight.dtype and (bias is None or bias.dtype == weight.dtype))
            and weight.dim() == 3 and input1.dim() >= 1 and input1.shape[:-1] == input2.shape[:-1]
            and input1.shape[-1] == weight.shape[1] and input2.shape[-1] == weight.shape[2]
            and (bias is None or bias.shape == weight.shape[:1])):
        _bilinear_error(input1, input2, weight, bias)
    if input1.dim() == 2:
        return apply(Bilinear, PROMOTE_CUDA, input1, input2, weight, bias)
    # fold the leading dims outside the Function, as linear does (a view made inside one may not be modified)
    out = apply(Bilinear, PROMOTE_CUDA, input1.reshape(-1, input1.shape[-1]), input2.reshape(-1, input2.shape[-1]),
                weight, bias)
    return out.reshape(*input1.shape[:-1], weight.shape[0])


def _bilinear_error(input1, input2, weight, bias):
    op = "bilinear"
    dtypes = {k: t.dtype for k, t in dict(input1=input1, input2=input2, weight=weight, bias=bias).items()
              if t is not None}
    check(len(set(dtypes.values())) == 1, op, f"all tensors must have one dtype, got {dtypes}")
    check(weight.dim() == 3, op, f"weight must be 3-D (out_features, in1_features, in2_features), got shape "
                                 f"{list(weight.shape)}")
    check(input1.dim() >= 1 and input1.shape[:-1] == input2.shape[:-1], op,
          f"input1 and input2 must have the same leading dims, got shapes {list(input1.shape)} and "
          f"{list(input2.shape)}")
    for name, t, k in (("input1", input1, 1), ("input2", input2, 2)):
        check(t.shape[-1] == weight.shape[k], op, f"{name} has {t.shape[-1]} features in its last dim but weight "
                                                  f"expects {weight.shape[k]} (weight's shape {list(weight.shape)})")
    check(bias is None or tuple(bias.shape) == (weight.shape[0],), op,
          f"bias must have shape [{weight.shape[0]}], got {list(bias.shape) if bias is not None else None}")


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.linear: linear, torch.bilinear: bilinear}  # (F.bilinear is torch.bilinear)

__all__ = ["linear", "bilinear"]


# --- the linear family as torch ops: matmul, mm, bmm, addmm --------------------------------------

class Matmul(DeltaFunction):
    """C = A B with torch.matmul's broadcasting (1-D operands promoted to a row / column, batch dims
    broadcast).

    backward, with δ = ∂J/∂C:
      δ_A = δ Bᵀ,   δ_B = Aᵀ δ      (the derivation's δ W and δ aᵀ for a layer whose "weight" is B)
    each summed over the batch dims its operand was broadcast along, then squeezed back to its shape.
    """

    @staticmethod
    def forward(A, B):
        return torch.matmul(A, B)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, B = inputs
        need_A, need_B = ctx.needs_input_grad
        ctx.save_for_backward(A if need_B else None, B if need_A else None)
        ctx.dims = A.dim(), B.dim()
        ctx.shapes = A.shape, B.shape

    @staticmethod
    def backward(ctx, delta):
        A, B = ctx.saved_tensors
        need_A, need_B = ctx.needs_input_grad
        (da, db), (sa, sb) = ctx.dims, ctx.shapes
        # promote 1-D operands as matmul does: A (k) -> (1, k), B (k) -> (k, 1); δ gains the same unit dims
        if da == 1:
            A = A.unsqueeze(0) if A is not None else None
            delta = delta.unsqueeze(-2 if db > 1 else 0)
        if db == 1:
            B = B.unsqueeze(-1) if B is not None else None
            delta = delta.unsqueeze(-1)
        grad_A = grad_B = None
        if need_A:
            grad_A = (delta @ B.mT).sum_to_size(sa if da > 1 else (1, sa[0])).reshape(sa)
        if need_B:
            if db <= 2 and delta.dim() > 2:  # B shared by every batch entry: fold the batch into one mm
                rows = math.prod(A.shape[:-1])  # spelled out: -1 is ambiguous for an empty contracted dim
                grad_B = A.reshape(rows, A.shape[-1]).mT @ delta.reshape(rows, delta.shape[-1])
            else:
                grad_B = (A.mT @ delta).sum_to_size(sb if db > 1 else (sb[0], 1))
            grad_B = grad_B.reshape(sb)
        return grad_A, grad_B


class Addmm(DeltaFunction):
    """C = β M + α A B  (A, B 2-D; M broadcast to C's shape).

    backward, with δ = ∂J/∂C:  δ_M = β Σ_broadcast δ,  δ_A = α δ Bᵀ,  δ_B = α Aᵀ δ.
    """

    @staticmethod
    def forward(M, A, B, beta, alpha):
        return torch.addmm(M, A, B, beta=beta, alpha=alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        M, A, B, beta, alpha = inputs
        need_M, need_A, need_B = ctx.needs_input_grad[:3]
        ctx.save_for_backward(A if need_B else None, B if need_A else None)
        ctx.M_shape, ctx.beta, ctx.alpha = M.shape, beta, alpha

    @staticmethod
    def backward(ctx, delta):
        A, B = ctx.saved_tensors
        need_M, need_A, need_B = ctx.needs_input_grad[:3]
        grad_M = (ctx.beta * delta).sum_to_size(ctx.M_shape) if need_M else None
        grad_A = ctx.alpha * (delta @ B.mT) if need_A else None
        grad_B = ctx.alpha * (A.mT @ delta) if need_B else None
        return grad_M, grad_A, grad_B, None, None


def _shape_error(a, b):
    return f"cannot multiply shapes {list(a.shape)} and {list(b.shape)}"


def matmul(input, other, *, out=None):
    """δ twin of ``torch.matmul`` / ``Tensor.matmul`` / ``a @ b`` (every broadcasting case)."""
    # (every message below is built only when its check fails: these run on every call)
    check(out is None, "matmul", "out= does not support automatic differentiation (torch refuses it too)")
    check_compatible("matmul", input=input, other=other)
    si, so = input.shape, other.shape
    if not (len(si) >= 1 and len(so) >= 1):
        fail("matmul", f"both arguments need at least 1 dimension, got {len(si)}-D and {len(so)}-D")
    k_other = so[-2] if len(so) >= 2 else so[0]
    if si[-1] != k_other:
        fail("matmul", _shape_error(input, other) + f" (input's last dim {si[-1]} != other's "
                       f"{'second-to-last' if len(so) >= 2 else 'only'} dim {k_other})")
    if si[:-2] != so[:-2]:
        try:
            torch.broadcast_shapes(si[:-2], so[:-2])
        except RuntimeError:
            fail("matmul", _shape_error(input, other) + ": batch dims do not broadcast")
    return apply(Matmul, LOWER, input, other)


def _rmatmul(self, other):  # Tensor.__rmatmul__: other @ self
    return matmul(other, self)


def mm(input, mat2, *, out=None):
    """δ twin of ``torch.mm`` (2-D only, no broadcasting)."""
    if not (isinstance(input, torch.Tensor) and isinstance(mat2, torch.Tensor) and input.dim() == 2
            and mat2.dim() == 2):
        fail("mm", f"both arguments must be 2-D, got shapes {list(getattr(input, 'shape', []))} and "
                   f"{list(getattr(mat2, 'shape', []))}")
    return matmul(input, mat2, out=out)


def bmm(input, mat2, *, out=None):
    """δ twin of ``torch.bmm`` (3-D with equal batch sizes, no broadcasting)."""
    if not (isinstance(input, torch.Tensor) and isinstance(mat2, torch.Tensor) and input.dim() == 3
            and mat2.dim() == 3 and input.shape[0] == mat2.shape[0]):
        fail("bmm", f"both arguments must be 3-D with equal batch sizes, got shapes "
                    f"{list(getattr(input, 'shape', []))} and {list(getattr(mat2, 'shape', []))}")
    return matmul(input, mat2, out=out)


def addmm(input, mat1, mat2, *, beta=1, alpha=1, out=None):
    """δ twin of ``torch.addmm`` / ``Tensor.addmm``: beta * input + alpha * (mat1 @ mat2)."""
    check(out is None, "addmm", "out= does not support automatic differentiation (torch refuses it too)")
    check_compatible("addmm", input=input, mat1=mat1, mat2=mat2)
    if not (mat1.dim() == 2 and mat2.dim() == 2 and mat1.shape[1] == mat2.shape[0]):
        fail("addmm", f"mat1 and mat2 must be 2-D and chainable, got shapes {list(mat1.shape)} and "
                      f"{list(mat2.shape)}")
    n, p = mat1.shape[0], mat2.shape[1]
    try:
        ok = torch.broadcast_shapes(input.shape, (n, p)) == (n, p)
    except RuntimeError:
        ok = False
    if not ok:
        fail("addmm", f"input of shape {list(input.shape)} does not broadcast to the product's shape "
                      f"[{n}, {p}]")
    return apply(Addmm, LOWER, input, mat1, mat2, beta, alpha)


# native callable -> δ twin with the same signature; read by torchbp.registry.
# `a @ b` reaches __torch_function__ as Tensor.matmul; __matmul__ and __rmatmul__ are listed for direct calls.
ROUTES.update({
    torch.matmul: matmul, torch.Tensor.matmul: matmul, torch.Tensor.__matmul__: matmul,
    torch.Tensor.__rmatmul__: _rmatmul,
    torch.mm: mm, torch.Tensor.mm: mm, torch.bmm: bmm, torch.Tensor.bmm: bmm,
    torch.addmm: addmm, torch.Tensor.addmm: addmm,
})

__all__ += ["matmul", "mm", "bmm", "addmm"]
