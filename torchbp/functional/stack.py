"""A run of dense layers as one δ Function: the derivation's back-propagation over the whole run.

forward, for l = 0 … L−1:  z(l+1) = W(l) a(l) + b(l),  a(l+1) = f_l(z(l+1))  (f_l optional)
backward, from the top of the run down (the derivation's recursion, written once):
  δ(l+1)  = δ_a(l+1) ⊙ f_l'(z(l+1))     (each activation's own ``delta``)
  ∂J/∂W(l) = δ(l+1)ᵀ a(l),   ∂J/∂b(l) = Σ_batch δ(l+1),   δ_a(l) = δ(l+1) W(l)   (Linear's own grad_W, grad_b, grad_a)

The formulas are exactly Linear's and the activations'; what changes is that Python's per-Function
cost (apply, context, saved tensors, one autograd node) is paid once per run instead of once per
layer, which is what a small network's step is made of. It saves what the per-layer Functions save
(each layer's input, each activation's output or input) and nothing more.

``torchbp.nn.Sequential`` calls it for runs of Linear (+ activation) children when nothing watches
the layers in between (no hooks), so the audit, which hooks every module, still sees each layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import LOWER, DeltaFunction, _apply_autocast_off, _cast, autocast_dtype
from .linear import Linear

# whether the running backward keeps the graph (retain_graph): then ctx must keep the run's tensors
_keep_graph = getattr(getattr(torch._C, "_autograd", None), "_get_current_graph_task_keep_graph", None)


class DenseStack(DeltaFunction):
    """``acts[l]``: None or (activation Function class, its extra args); ``dtype``: autocast's dtype or
    None; ``params``: W0, b0, W1, b1, … (a b may be None). ``x`` is 2-D (``dense_stack`` folds leading dims)."""

    generate_vmap_rule = False  # saves intermediates (ctx-style forward): callers fall back under vmap

    @staticmethod
    def forward(ctx, x, acts, dtype, *params):
        # Under autocast (dtype: its dtype), x, W and b are cast here, as autocast casts linear's inputs,
        # instead of by the caller: no ToCopy node per parameter in the graph (native has one each). Each
        # ∂J/∂W(l) is cast back to W(l)'s dtype as soon as it is made, as ToCopy's δ would (x's δ by the engine).
        xc, pc = (x, params) if dtype is None else (_cast(dtype, (x,))[0], _cast(dtype, params))
        a, inputs, kept = _run(xc, acts, pc)
        ctx.acts, ctx.L, ctx.dtype = acts, len(acts), dtype
        # What the caller can reach (x, the output, the parameters) is saved the checked way (an in-place
        # change before backward raises); the run's inner tensors nobody else holds (the casts too) are
        # kept on ctx, so backward can drop each layer's as soon as it is done (per-layer Functions free
        # theirs likewise)
        last = kept[-1] is a
        ctx.save_for_backward(x, a if last else None, *params)
        ctx.inner = ([None if xc is x else xc] + inputs[1:], kept[:-1] + [None] if last else kept,
                     None if pc is params else pc)
        return a

    @staticmethod
    def backward(ctx, delta):
        x, out, *params = ctx.saved_tensors
        L = ctx.L
        pdt = None if ctx.dtype is None else [None if p is None else p.dtype for p in params]  # for the casts back
        if torch.is_grad_enabled():
            # create_graph: the intermediates were made inside forward and carry no graph to x and the
            # W, b; replay the run (and the casts) through the per-layer δ Functions so second derivatives
            # are right
            if ctx.dtype is not None:
                x, params = _cast(ctx.dtype, (x,))[0], _cast(ctx.dtype, params)
            _, inputs, kept = _run(x, ctx.acts, params, replay=True)
        else:
            inputs, kept, cast = ctx.inner
            inputs, kept = [inputs[0] if inputs[0] is not None else x] + inputs[1:], \
                kept[:-1] + [out if out is not None else kept[-1]]
            params = cast if cast is not None else params  # autocast's copies of W, b when there are
            del cast  # (the last reference besides params: each Ws[l] = None below frees one)
            if _keep_graph is not None and not _keep_graph():
                ctx.inner = None  # ctx lets go: each layer's tensors are freed once its step below is done
        Ws = list(params[0::2])
        del params
        need = ctx.needs_input_grad
        grads = [None] * (2 * L)
        for l in reversed(range(L)):
            act = ctx.acts[l]
            if act is not None:
                cls, args = act
                delta = cls.delta(delta, kept[l], *args)
            kept[l] = None
            if need[3 + 2 * l]:
                grads[2 * l] = Linear.grad_W(delta, inputs[l])
            inputs[l] = None
            if need[4 + 2 * l]:
                grads[2 * l + 1] = Linear.grad_b(delta)
            delta = Linear.grad_a(delta, Ws[l]) if l > 0 or need[0] else None
            Ws[l] = None  # autocast's copy of W(l) goes now, as native's goes with its layer's node
            if pdt is not None:  # then the casts back (ToCopy's δ): one half-precision ∂J/∂W alive at a time
                grads[2 * l: 2 * l + 2] = [g if g is None else g.to(pdt[i]) for i, g in
                                           enumerate(grads[2 * l: 2 * l + 2], 2 * l)]
        return (delta, None, None, *grads)


def _run(x, acts, params, replay=False):
    """The run's forward: (output, each layer's input, each activation's saved tensor). ``replay``: through
    Linear.apply and the activations' own δ Functions, so the results are connected to x and the parameters."""
    a, inputs, kept = x, [], []
    for l, act in enumerate(acts):
        inputs.append(a)
        z = (Linear.apply if replay else F.linear)(a, params[2 * l], params[2 * l + 1])
        if act is None:
            a = z
            kept.append(None)
        else:
            cls, args = act
            if replay:
                a = cls.apply(z, *args)
            else:  # z is this forward's own temporary: f in place where f' is read from a alone
                a = (cls.forward_ if cls.save_output and hasattr(cls, "forward_") else cls.forward)(z, *args)
            kept.append(a if cls.save_output else z)
    return a, inputs, kept


def dense_stack(input, layers):
    """Linear (+ activation) layers in one δ Function. ``layers``: a sequence of
    ``(weight, bias, activation)`` with activation None or (Function class, args), e.g.
    ``(W, b, (activation.ReLU, ()))``. Under autocast, input and parameters are cast as for linear
    (the activations of a run are not on autocast's lists). The caller has checked shapes, dtypes and
    devices. Not under torch.func transforms (a ctx-style Function; the nn.Sequential twin uses the
    per-layer Functions there)."""
    acts = tuple(act for _, _, act in layers)
    params = [t for W, b, _ in layers for t in (W, b)]
    x = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])
    dtype = autocast_dtype(LOWER, (x,))  # autocast: cast as for linear
    if dtype is None:
        out = DenseStack.apply(x, acts, None, *params)
    else:
        out = _apply_autocast_off(DenseStack, x.device.type, (x, acts, dtype, *params))
    return out if input.dim() == 2 else out.reshape(*input.shape[:-1], out.shape[-1])


ROUTES: dict = {}  # no native op to route: torchbp.nn.Sequential calls it
__all__ = ["dense_stack"]
