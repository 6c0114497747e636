"""Shape and indexing ops that move or copy values: cat, stack, advanced indexing, gather, scatter,
index_select, roll, flip, repeat, tril / triu, einsum, and weight normalisation's w = g v / ‖v‖.

Each output element is some input element (or a sum of products, for einsum), so δ_x is δ sent back to the
position it came from, summed where one input element fed several outputs.

Structure ops stay native: views whose backward only re-reads δ in another shape (view, reshape, flatten,
permute, transpose, squeeze / unsqueeze, expand, split / chunk / unbind / narrow, basic slicing x[1:, 0],
.contiguous(), casts). They do no arithmetic; the audit's coverage looks through them to the δ Function
that consumes their result.
"""
from __future__ import annotations

import torch

from ._common import DeltaFunction, check

_T = torch.Tensor


def _is_t(a) -> bool:
    return isinstance(a, torch.Tensor)


class Cat(DeltaFunction):
    """out = [x₁ x₂ …] along dim;  δ_xᵢ = the slice of δ where xᵢ was placed."""

    @staticmethod
    def forward(dim, *xs):
        return torch.cat(xs, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dim, *xs = inputs
        ctx.dim = dim % output.dim() if output.dim() else 0
        # torch.cat skips 1-D empty tensors next to n-D ones (legacy); they take no slice
        ctx.sizes = [0 if (x.dim() == 1 and x.numel() == 0 and output.dim() != 1) else x.shape[ctx.dim] for x in xs]
        ctx.shapes = [x.shape for x in xs]

    @staticmethod
    def backward(ctx, delta):
        grads, start = [], 0
        for size, shape, need in zip(ctx.sizes, ctx.shapes, ctx.needs_input_grad[1:]):
            grads.append(delta.narrow(ctx.dim, start, size).reshape(shape) if need else None)
            start += size
        return (None, *grads)


class Stack(DeltaFunction):
    """out = [x₁; x₂; …] stacked on a new dim;  δ_xᵢ = δ[..., i, ...] at that dim."""

    @staticmethod
    def forward(dim, *xs):
        return torch.stack(xs, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[0] % output.dim()

    @staticmethod
    def backward(ctx, delta):
        return (None, *(delta.select(ctx.dim, i) if need else None
                        for i, need in enumerate(ctx.needs_input_grad[1:])))


class Index(DeltaFunction):
    """out = x[index] (any index: tensors, masks, lists, mixed with slices);
    δ_x = Σ of δ at every output position that read x's element: x's flat positions ``pos`` are
    indexed the same way, and δ is added back at them (index_add, so repeated positions accumulate)."""

    @staticmethod
    def forward(x, index):
        return x[index]

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, index = inputs
        ctx.shape = x.shape
        pos = torch.arange(x.numel(), device=x.device).reshape(x.shape)[index]
        ctx.save_for_backward(pos)

    @staticmethod
    def backward(ctx, delta):
        (pos,) = ctx.saved_tensors
        n = 1
        for s in ctx.shape:
            n *= s
        g = delta.new_zeros(n).index_add(0, pos.reshape(-1), delta.reshape(-1))
        return g.reshape(ctx.shape), None


class _ReadAt(DeltaFunction):
    """What the ops reading x along ``dim`` at ``index`` (forward(x, dim, index)) keep for backward: the
    index and x's shape."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dim, index = inputs
        ctx.save_for_backward(index)
        ctx.shape = x.shape


class Gather(_ReadAt):
    """out[i][j] = x[index[i][j]][j] (dim 0; likewise any dim);  δ_x = δ scattered and added at index."""

    @staticmethod
    def forward(x, dim, index):
        return torch.gather(x, dim, index)

    @staticmethod
    def backward(ctx, delta):
        (index,) = ctx.saved_tensors
        return delta.new_zeros(ctx.shape).scatter_add(ctx.dim, index, delta), None, None


class IndexSelect(_ReadAt):
    """out = x rows ``index`` along dim;  δ_x = δ added back at those rows (index_add)."""

    @staticmethod
    def forward(x, dim, index):
        return torch.index_select(x, dim, index)

    @staticmethod
    def backward(ctx, delta):
        (index,) = ctx.saved_tensors
        if len(ctx.shape) == 0:
            return delta.reshape(()), None, None
        return delta.new_zeros(ctx.shape).index_add(ctx.dim, index, delta), None, None


class Scatter(DeltaFunction):
    """out = x with src written at index along dim (``reduce="add"``: added there);
    δ_x = δ, 0 at the overwritten positions (all of δ for add);  δ_src = δ gathered at index."""

    @staticmethod
    def forward(x, dim, index, src, add):
        return torch.scatter_add(x, dim, index, src) if add else torch.scatter(x, dim, index, src)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.dim, index, src, ctx.add = inputs
        ctx.save_for_backward(index)
        ctx.src_is_t = _is_t(src)

    @staticmethod
    def backward(ctx, delta):
        (index,) = ctx.saved_tensors
        need_x, _, _, need_src, _ = ctx.needs_input_grad
        gx = (delta if ctx.add else delta.scatter(ctx.dim, index, 0.0)) if need_x else None
        gs = delta.gather(ctx.dim, index) if need_src else None
        return gx, None, None, gs, None


class Roll(DeltaFunction):
    """out = x shifted cyclically by s along dims;  δ_x = δ shifted by −s."""

    @staticmethod
    def forward(x, shifts, dims):
        return torch.roll(x, shifts, dims)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, shifts, ctx.dims = inputs
        ctx.back = tuple(-s for s in shifts) if isinstance(shifts, (tuple, list)) else -shifts

    @staticmethod
    def backward(ctx, delta):
        return torch.roll(delta, ctx.back, ctx.dims), None, None


class Flip(DeltaFunction):
    """out = x reversed along dims;  δ_x = δ reversed along the same dims."""

    @staticmethod
    def forward(x, dims):
        return torch.flip(x, dims)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dims = inputs[1]

    @staticmethod
    def backward(ctx, delta):
        return torch.flip(delta, ctx.dims), None


class Repeat(DeltaFunction):
    """out = x tiled rᵢ times along each dim;  δ_x = Σ over the rᵢ tiles of δ (δ viewed as (r₀, s₀, r₁, s₁, …))."""

    @staticmethod
    def forward(x, repeats):
        return x.repeat(repeats)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.repeats = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, delta):
        reps, shape = ctx.repeats, ctx.shape
        padded = (1,) * (len(reps) - len(shape)) + tuple(shape)
        split = [n for r, s in zip(reps, padded) for n in (r, s)]
        tiles = tuple(range(0, 2 * len(reps), 2))
        return delta.reshape(split).sum(tiles).reshape(shape), None


class Tri(DeltaFunction):
    """out = the lower (tril) or upper (triu) triangle of x from ``diagonal`` on;  δ_x = the same triangle of δ."""

    @staticmethod
    def forward(x, diagonal, upper):
        return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.diagonal, ctx.upper = inputs

    @staticmethod
    def backward(ctx, delta):
        return (torch.triu if ctx.upper else torch.tril)(delta, ctx.diagonal), None, None


class Einsum(DeltaFunction):
    """out = einsum("a,b->o", A, B, ...) (each operand's letters distinct, no ellipsis);
    δ_A = einsum("o,b,...->a", δ, B, ...): the contraction of δ with every other operand, to A's letters
    (broadcast over a letter only A has, which the output summed: ∂out/∂A does not depend on it)."""

    @staticmethod
    def forward(spec, *ops):
        return torch.einsum(spec, *ops)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, *ops = inputs
        ctx.spec = spec
        ctx.save_for_backward(*ops)

    @staticmethod
    def backward(ctx, delta):
        # under autocast forward ran native's einsum, which contracts in the autocast dtype where it reaches a
        # matmul: δ then comes in that dtype, and the contractions of δ take the operands as native's did
        ops = [o if o.dtype == delta.dtype else o.to(delta.dtype) for o in ctx.saved_tensors]
        lhs, out = ctx.spec.split("->")
        subs = lhs.split(",")
        grads = []
        for i, (sub, need) in enumerate(zip(subs, ctx.needs_input_grad[1:])):
            if not need:
                grads.append(None)
                continue
            others = [s for j, s in enumerate(subs) if j != i]
            present = set(out).union(*others)
            kept = "".join(c for c in sub if c in present)
            g = torch.einsum(",".join([out] + others) + "->" + kept, delta, *(o for j, o in enumerate(ops) if j != i))
            if kept != sub:  # a letter only this operand has: ∂out/∂A is the same for each of its values
                for k, c in enumerate(sub):
                    if c not in present:
                        g = g.unsqueeze(k)
                g = g.expand(ops[i].shape)
            grads.append(g)
        return (None, *grads)


class WeightNorm(DeltaFunction):
    """w = g v / ‖v‖ (the norm over every dim but ``dim``);  with s = Σ δ ⊙ v over those dims,
    δ_g = s / ‖v‖,  δ_v = (g / ‖v‖) (δ − v s / ‖v‖²)."""

    @staticmethod
    def forward(v, g, dim):
        return torch._weight_norm(v, g, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, g, dim = inputs
        ctx.save_for_backward(v, g)
        ctx.dims = tuple(range(v.dim())) if dim == -1 else tuple(k for k in range(v.dim()) if k != dim)

    @staticmethod
    def backward(ctx, delta):
        v, g = ctx.saved_tensors
        need_v, need_g, _ = ctx.needs_input_grad
        norm = v.pow(2).sum(ctx.dims, keepdim=True).sqrt()
        s = (delta * v).sum(ctx.dims, keepdim=True)
        gg = (s / norm).reshape(g.shape) if need_g else None
        gv = (g.reshape(norm.shape) / norm) * (delta - v * (s / (norm * norm))) if need_v else None
        return gv, gg, None


# --- functional forms ---------------------------------------------------------------------------------

def _floating(*ts) -> bool:
    return any(_is_t(t) and t.is_floating_point() for t in ts)


def cat(tensors, dim=0, *, out=None):
    """δ twin of ``torch.cat`` / ``concat`` / ``concatenate``."""
    tensors = tuple(tensors)
    if out is not None or not _floating(*tensors) or len(tensors) == 0:
        return torch.cat(tensors, dim, out=out)
    return Cat.apply(dim, *tensors)


def stack(tensors, dim=0, *, out=None):
    """δ twin of ``torch.stack``."""
    tensors = tuple(tensors)
    if out is not None or not _floating(*tensors) or len(tensors) == 0:
        return torch.stack(tensors, dim, out=out)
    return Stack.apply(dim, *tensors)


def _basic(i) -> bool:
    return i is None or i is Ellipsis or isinstance(i, (int, slice, bool))


def getitem(x, index):
    """δ twin of ``x[index]`` for advanced indexing (tensors, masks, lists); basic slicing is structure
    (a view) and stays native."""
    if (_basic(index) or (isinstance(index, tuple) and all(_basic(i) for i in index))) \
            or not x.is_floating_point():
        return _T.__getitem__(x, index)
    return Index.apply(x, index)


def gather(input, dim, index, *, sparse_grad=False, out=None):
    """δ twin of ``torch.gather``."""
    if out is not None or not _floating(input):
        return torch.gather(input, dim, index, sparse_grad=sparse_grad, out=out)
    return Gather.apply(input, dim, index)


def take_along_dim(input, indices, dim=None, *, out=None):
    """δ twin of ``torch.take_along_dim`` (a gather after broadcasting input and indices)."""
    if out is not None or not _floating(input):
        return torch.take_along_dim(input, indices, dim, out=out)
    if dim is None:
        input, indices, dim = input.reshape(-1), indices.reshape(-1), 0
    n = input.shape[dim] if input.dim() else 1
    indices = torch.where(indices < 0, indices + n, indices)  # take_along_dim counts from the end, gather does not
    if input.dim() <= 1:
        return Gather.apply(input, dim, indices)
    check(input.dim() == indices.dim(), "take_along_dim",
          f"input and indices need the same number of dims, got {input.dim()} and {indices.dim()}")
    dim = dim % max(input.dim(), 1)
    # every dim but ``dim`` broadcasts between input and indices (expand: structure)
    shape = [max(a, b) if k != dim else None for k, (a, b) in enumerate(zip(input.shape, indices.shape))]
    shape_x = [input.shape[k] if k == dim else n for k, n in enumerate(shape)]
    shape_i = [indices.shape[k] if k == dim else n for k, n in enumerate(shape)]
    return Gather.apply(input.expand(shape_x), dim, indices.expand(shape_i))


def index_select(input, dim, index, *, out=None):
    """δ twin of ``torch.index_select``."""
    if out is not None or not _floating(input):
        return torch.index_select(input, dim, index, out=out)
    return IndexSelect.apply(input, dim, index)


def scatter(input, dim, index, src=None, *, value=None, reduce=None, out=None):
    """δ twin of ``torch.scatter`` (src a tensor or a number; ``reduce`` other than none stays native)."""
    if src is None:
        src = value
    if out is not None or reduce is not None or not _floating(input, src):
        kw = {} if reduce is None else {"reduce": reduce}
        return torch.scatter(input, dim, index, src, out=out, **kw) if out is not None \
            else torch.scatter(input, dim, index, src, **kw)
    return Scatter.apply(input, dim, index, src, False)


def scatter_add(input, dim, index, src, *, out=None):
    """δ twin of ``torch.scatter_add``."""
    if out is not None or not _floating(input, src):
        return torch.scatter_add(input, dim, index, src, out=out)
    return Scatter.apply(input, dim, index, src, True)


def roll(input, shifts, dims=None):
    """δ twin of ``torch.roll``."""
    if not _floating(input):
        return torch.roll(input, shifts, dims)
    if dims is None:  # roll of the flattened tensor
        return Roll.apply(input.reshape(-1), shifts, 0).reshape(input.shape)
    return Roll.apply(input, shifts, dims)


def flip(input, dims):
    """δ twin of ``torch.flip``."""
    if not _floating(input):
        return torch.flip(input, dims)
    return Flip.apply(input, tuple(dims) if isinstance(dims, (list, tuple)) else (dims,))


def repeat(input, *sizes):
    """δ twin of ``Tensor.repeat``."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    if not _floating(input):
        return input.repeat(sizes)
    check(len(sizes) >= input.dim(), "repeat", f"needs at least {input.dim()} repeat counts, got {list(sizes)}")
    return Repeat.apply(input, tuple(int(s) for s in sizes))


def tril(input, diagonal=0, *, out=None):
    """δ twin of ``torch.tril``."""
    if out is not None or not _floating(input):
        return torch.tril(input, diagonal, out=out)
    return Tri.apply(input, diagonal, False)


def triu(input, diagonal=0, *, out=None):
    """δ twin of ``torch.triu``."""
    if out is not None or not _floating(input):
        return torch.triu(input, diagonal, out=out)
    return Tri.apply(input, diagonal, True)


def einsum(equation, *operands):
    """δ twin of ``torch.einsum`` for explicit equations ("ij,jk->ik") whose operands have distinct letters;
    other forms (ellipsis, implicit output, a repeated letter: a diagonal) stay native."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    eq = equation.replace(" ", "")
    subs = eq.split("->")[0].split(",") if "->" in eq else []
    if "->" not in eq or "." in eq or len(subs) != len(operands) or not _floating(*operands) \
            or any(len(set(s)) != len(s) for s in subs) or any(o.is_complex() for o in operands):
        return torch.einsum(equation, *operands)
    return Einsum.apply(eq, *operands)


def weight_norm(v, g, dim=0):
    """δ twin of ``torch._weight_norm`` (what ``torch.nn.utils.parametrizations.weight_norm`` computes)."""
    if not _floating(v, g):
        return torch._weight_norm(v, g, dim)
    # g holds one value per slice of v along dim (torch's kernel reads it flat): one of another size, which
    # torch takes without a word (reading past its end, or corrupting memory under vmap), is refused here
    if -1 <= dim < v.dim():
        n = 1 if dim == -1 or v.dim() == 0 else v.shape[dim]
        check(g.numel() == n, "torch._weight_norm", f"g has {g.numel()} elements but v of shape {list(v.shape)} "
              f"has {n} slices along dim {dim} (one g each)")
    return WeightNorm.apply(v, g, dim)


ROUTES = {
    torch.cat: cat, torch.concat: cat, torch.concatenate: cat, torch.stack: stack,
    _T.__getitem__: getitem,
    torch.gather: gather, _T.gather: gather, torch.take_along_dim: take_along_dim, _T.take_along_dim: take_along_dim,
    torch.index_select: index_select, _T.index_select: index_select,
    torch.scatter: scatter, _T.scatter: scatter, torch.scatter_add: scatter_add, _T.scatter_add: scatter_add,
    torch.roll: roll, _T.roll: roll, torch.flip: flip, _T.flip: lambda self, *dims: flip(
        self, dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims),
    _T.repeat: repeat, torch.tril: tril, _T.tril: tril, torch.triu: triu, _T.triu: triu,
    torch.einsum: einsum, torch._weight_norm: weight_norm,
}

# (``stack`` is not exported by name: torchbp.functional.stack is the dense-stack family's module)
__all__ = ["cat", "getitem", "gather", "take_along_dim", "index_select", "scatter", "scatter_add", "roll",
           "flip", "repeat", "tril", "triu", "einsum", "weight_norm"]
