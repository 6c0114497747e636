"""Peer suite: PyTorch's own OpInfo samples (``op_db``) through every op torchbp routes, and ``module_db``'s
inputs through every twin, against native autograd.

For each OpInfo entry whose op is routed by ``torchbp.registry`` (matched by the op itself, its method or
in-place variant, or the callable its name resolves to), every sample is run natively and under
``manual_backward()``: float64 outputs and gradients equal native (rel 1e-10, NaN where native has NaN),
float32 within the oracle rule, second order for the ops that have it, the in-place variants, and a δ
Function in the output's graph (no silent native fallback). torchbp may refuse a sample only where native
refuses it too. New samples and newly routed ops join by themselves; what is skipped is listed below with
its reason.
"""
from __future__ import annotations

import copy
import functools
import inspect
import math

import pytest
import torch

pytest.importorskip("expecttest")  # torch's testing internals import it

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

import torchbp  # noqa: E402
from torchbp import registry  # noqa: E402
from util import FLOOR, _tensors, rel_err  # noqa: E402

# How many samples per op each check runs: an evenly spread, deterministic subset (the first and the last
# sample always among them; samples torch adds join the spread), so the whole file stays within a few
# minutes on two cores.
N_FLOAT64 = 48
N_FLOAT32 = 12
N_GRADGRAD = 3
N_INPLACE = 8
N_MODULE = 6

# OpInfo entries matched to a routed op that this suite does not run, with the reason.
SKIP_OPS: dict[str, str] = {}
# Known failures: entry -> reason (each one a limitation still open; the suite reports it as xfail).
XFAIL_OPS: dict[str, str] = {
}
# Module twins whose module_db inputs are not run, with the reason.
SKIP_MODULES: dict[str, str] = {}
# Known module failures: twin -> reason.
XFAIL_MODULES: dict[str, str] = {
}


def _resolve(name):
    obj = torch
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _candidates(o):
    return [o.op, o.method_variant, o.inplace_variant, _resolve(o.name), getattr(torch.Tensor, o.name, None)]


def _is_routed(o):
    return any(c is not None and registry.function_for(c) is not None for c in _candidates(o))


def _name(o):
    return o.name + (f".{o.variant_test_name}" if o.variant_test_name else "")


OPS = [o for o in op_db if _is_routed(o) and o.supports_autograd]
TWINS = [m for m in module_db if registry.twin_for(m.module_cls) is not None]


def _params(entries, name, skips, xfails):
    out = []
    for e in entries:
        n = name(e)
        marks = []
        if n in skips:
            marks.append(pytest.mark.skip(reason=skips[n]))
        if n in xfails:
            marks.append(pytest.mark.xfail(reason=xfails[n], strict=False))
        out.append(pytest.param(e, id=n, marks=marks))
    return out


OP_PARAMS = _params(OPS, _name, SKIP_OPS, XFAIL_OPS)
MODULE_PARAMS = _params(TWINS, lambda m: m.module_cls.__name__, SKIP_MODULES, XFAIL_MODULES)


def _spread(items, k):
    """At most k of ``items``, evenly spread (deterministic; first and last included)."""
    items = list(items)
    n = len(items)
    if n <= k:
        return items
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


# --- running one sample -----------------------------------------------------------------------------

def _fresh(obj, dtype=None):
    """Fresh leaves (floating tensors to ``dtype`` if given), the requires_grad flags kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        t = t.to(dtype) if dtype is not None and t.is_floating_point() else t.clone()
        return t.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fresh(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _fresh(v, dtype) for k, v in obj.items()}
    return obj


class _Refused(Exception):
    def __init__(self, stage, error):
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage, self.error = stage, error


def _delta_ran(outs):
    seen, stack = set(), [o.grad_fn for o in outs]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if registry.is_delta_function(getattr(type(f), "_forward_cls", None)):
            return True
        stack.extend(n for n, _ in f.next_functions)
    return False


def _run(fn, args, kwargs, routed, *, order=1, inplace=False):
    """(outputs, first-order grads, second-order grads or None, δ ran, args after the call).

    ``inplace``: the first argument is a fresh non-leaf copy of the leaf (so an in-place op may write it)."""
    leaves = [t for t in _tensors((args, kwargs)) if t.requires_grad]
    if inplace:
        args = (args[0].clone() if args[0].requires_grad else args[0].clone(),) + tuple(args[1:])
    torch.manual_seed(0)
    try:
        if routed:
            with torchbp.manual_backward():
                out = fn(*args, **kwargs)
        else:
            out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise _Refused("forward", e) from e
    outs = _tensors(out)
    diff = [o for o in outs if o.requires_grad and (o.is_floating_point() or o.is_complex())]
    ran = _delta_ran(diff)
    grads, ggrads, vnorm = None, None, 1.0
    if diff and leaves:
        g = torch.Generator().manual_seed(1)
        vs = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in diff]
        vnorm = max(1.0, math.sqrt(sum(float(v.double().norm()) ** 2 for v in vs)))
        try:
            grads = torch.autograd.grad(diff, leaves, vs, allow_unused=True, create_graph=order > 1)
        except Exception as e:  # noqa: BLE001
            raise _Refused("backward", e) from e
        if order > 1:
            gd = [(gr, l) for gr, l in zip(grads, leaves) if gr is not None and gr.requires_grad]
            # the same seeded weights on both sides: one per first-order grad, drawn in order, whether or
            # not that grad depends on the inputs (a linear op's does not; its second order is zero)
            ws = [None if gr is None else torch.randn(gr.shape, generator=g, dtype=torch.float64).to(gr)
                  for gr in grads]
            gd = [(gr, w) for gr, w in zip(grads, ws) if gr is not None and gr.requires_grad]
            ggrads = [None] * len(leaves)
            if gd:
                try:
                    ggrads = list(torch.autograd.grad([gr for gr, _ in gd], leaves, [w for _, w in gd],
                                                      allow_unused=True))
                except Exception as e:  # noqa: BLE001
                    raise _Refused("double backward", e) from e
        grads = [None if gr is None else gr.detach() for gr in grads]
    return [o.detach() for o in outs], grads, ggrads, ran, args, vnorm


def _pair(call_native, call_delta):
    """Both sides; a refusal by torchbp is accepted only where native refuses (the same kind of error)."""
    try:
        native = call_native()
    except _Refused as n:
        try:
            call_delta()
        except _Refused as d:
            assert isinstance(d.error, type(n.error)) or isinstance(n.error, type(d.error)) \
                or (isinstance(d.error, RuntimeError) and isinstance(n.error, RuntimeError)), \
                f"native refused with {n}, torchbp with {d}"
            return None, None
        if n.stage == "forward":  # an input native rejects must not pass silently
            raise AssertionError(f"native refuses ({n}) but torchbp computes") from None
        return None, None  # torchbp's backward goes further than native's (a second order of its own)
    try:
        delta = call_delta()
    except _Refused as d:
        raise AssertionError(f"torchbp refuses what native computes: {d}") from d.error
    return native, delta


def _close64(what, s, n, atol=0.0):
    if s is None or n is None:
        assert s is None or not s.any(), f"{what}: torchbp gives a gradient where native gives none"
        assert n is None or not n.any(), f"{what}: native gives a gradient where torchbp gives none"
        return
    assert s.shape == n.shape and s.dtype == n.dtype, f"{what}: {s.shape} {s.dtype} vs native {n.shape} {n.dtype}"
    if not (s.is_floating_point() or s.is_complex()):
        assert torch.equal(s, n), f"{what}: differs from native"
        return
    nan_s, nan_n = s.isnan(), n.isnan()
    assert torch.equal(nan_s, nan_n), f"{what}: NaN at other positions than native's"
    s, n = s.masked_fill(nan_n, 0), n.masked_fill(nan_n, 0)
    inf = n.isinf()
    assert torch.equal(s.isinf(), inf) and torch.equal(s[inf], n[inf]), f"{what}: inf differs from native"
    s, n = s.masked_fill(inf, 0).double(), n.masked_fill(inf, 0).double()
    e, norm = float((s - n).norm()), float(n.norm())
    assert e <= 1e-10 * norm + atol, f"{what}: rel err {e / max(norm, 1e-300):.3e} vs native (abs {e:.2e})"


def _compare64(native, delta, label):
    outs_n, g_n, gg_n = native[:3]
    outs_s, g_s, gg_s = delta[:3]
    # a gradient that is the rounding of a cancellation (mathematically 0, or far below the terms that
    # cancel: normalizing one element, two elements in a group) is equal up to 1e-12 of the cost's scale
    atol = 1e-12 * native[5]
    assert len(outs_s) == len(outs_n), f"{label}: {len(outs_s)} outputs vs native {len(outs_n)}"
    for i, (s, n) in enumerate(zip(outs_s, outs_n)):
        _close64(f"{label} output {i}", s, n)
    for kind, a, b in (("grad", g_s, g_n), ("second-order grad", gg_s, gg_n)):
        assert (a is None) == (b is None), f"{label}: {kind} on one side only"
        for i, (s, n) in enumerate(zip(a or [], b or [])):
            _close64(f"{label} {kind} {i}", s, n, atol)


def _sample_args(s, dtype=None):
    args = _fresh((s.input,) + tuple(s.args), dtype)
    return args, _fresh(dict(s.kwargs), dtype)


def _check_delta_ran(delta, args, label):
    outs, ran = delta[0], delta[3]
    diff = [o for o in outs if o.requires_grad]
    if not any(t.requires_grad for t in _tensors(args)):
        return
    # an op that hands back its input itself (dropout with p = 0 or in eval, ...) or an empty result
    # computes nothing
    if all(any(o is a for a in _tensors(args)) for o in outs) or all(o.numel() == 0 for o in outs):
        return
    assert ran or not diff, f"{label}: no δ Function in the output's graph (native fallback)"


def _sample_label(o, i, s):
    return f"{_name(o)} sample {i} ({s.summary() if hasattr(s, 'summary') else ''})"[:300]


# --- the op checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OP_PARAMS)
def test_float64_matches_native(op):
    if not op.supports_dtype(torch.float64, "cpu"):
        pytest.skip("no float64 samples")
    for i, s in enumerate(_spread(op.sample_inputs("cpu", torch.float64, requires_grad=True), N_FLOAT64)):
        label = _sample_label(op, i, s)
        args, kwargs = _sample_args(s)
        args2, kwargs2 = _fresh(args), _fresh(kwargs)
        native, delta = _pair(lambda: _run(op.op, args, kwargs, False), lambda: _run(op.op, args2, kwargs2, True))
        if native is None:
            continue
        _compare64(native, delta, label)
        _check_delta_ran(delta, args2, label)


@pytest.mark.parametrize("op", OP_PARAMS)
def test_float32_oracle_rule(op):
    if not op.supports_dtype(torch.float32, "cpu"):
        pytest.skip("no float32 samples")
    samples = _spread(op.sample_inputs("cpu", torch.float32, requires_grad=True), N_FLOAT32)
    for i, s in enumerate(samples):
        label = _sample_label(op, i, s)
        a32, k32 = _sample_args(s)
        native, delta = _pair(lambda: _run(op.op, *_fresh((a32, k32)), False),
                              lambda: _run(op.op, *_fresh((a32, k32)), True))
        if native is None:
            continue
        oracle = _run(op.op, *_fresh((a32, k32), torch.float64), False)
        for kind, k in (("output", 0), ("grad", 1)):
            for j, (s_, n_, o_) in enumerate(zip(delta[k] or [], native[k] or [], oracle[k] or [])):
                if n_ is None or o_ is None or not n_.is_floating_point():
                    continue
                assert s_ is not None and s_.shape == n_.shape and s_.dtype == n_.dtype, f"{label} {kind} {j}"
                if not (o_.isfinite().all() and n_.isfinite().all()):
                    assert torch.equal(s_.isnan(), n_.isnan()), f"{label} {kind} {j}: NaN unlike native"
                    continue
                es, en = rel_err(s_, o_), rel_err(n_, o_)
                assert es <= 2 * en + FLOOR[torch.float32], \
                    f"{label} {kind} {j}: err {es:.3e} vs native {en:.3e} (float32)"


@pytest.mark.parametrize("op", [p for p in OP_PARAMS if p.values[0].supports_gradgrad])
def test_second_order_matches_native(op):
    samples = _spread(op.sample_inputs("cpu", torch.float64, requires_grad=True), N_GRADGRAD)
    for i, s in enumerate(samples):
        label = _sample_label(op, i, s)
        args, kwargs = _sample_args(s)
        native, delta = _pair(lambda: _run(op.op, *_fresh((args, kwargs)), False, order=2),
                              lambda: _run(op.op, *_fresh((args, kwargs)), True, order=2))
        if native is not None:
            _compare64(native, delta, label)


def _inplace_routed(op):
    """The in-place variant is routed itself, or is OpInfo's Python wrapper around the routed functional
    (``lambda x, ...: F.relu(x, inplace=True)``, a ``functools.partial`` of it): the δ-ran check below
    holds it to that."""
    v = op.inplace_variant
    if isinstance(v, functools.partial):
        v = v.func
    return v is not None and (registry.function_for(v) is not None or inspect.isfunction(v))


@pytest.mark.parametrize("op", [p for p in OP_PARAMS if p.values[0].inplace_variant is not None])
def test_inplace_variant_matches_native(op):
    if not _inplace_routed(op):
        pytest.skip(f"the in-place variant {getattr(op.inplace_variant, '__name__', op.inplace_variant)} "
                    "is not routed")
    samples = _spread(op.sample_inputs("cpu", torch.float64, requires_grad=True), N_INPLACE)
    for i, s in enumerate(samples):
        if s.broadcasts_input or not isinstance(s.input, torch.Tensor):
            continue  # native refuses to write a broadcast result into its input
        label = _sample_label(op, i, s) + " in place"
        args, kwargs = _sample_args(s)
        args2, kwargs2 = _fresh(args), _fresh(kwargs)
        native, delta = _pair(lambda: _run(op.inplace_variant, args, kwargs, False, inplace=True),
                              lambda: _run(op.inplace_variant, args2, kwargs2, True, inplace=True))
        if native is None:
            continue
        _compare64(native, delta, label)
        _close64(f"{label} input after the call", delta[4][0].detach(), native[4][0].detach())
        _check_delta_ran(delta, args2, label)


# --- the module twins -------------------------------------------------------------------------------

def _module_cases(mi, training):
    return mi.module_inputs_func(mi, device="cpu", dtype=torch.float64, requires_grad=True, training=training)


@pytest.mark.parametrize("mi", MODULE_PARAMS)
def test_module_twin_matches_native(mi):
    modes = (True, False) if mi.train_and_eval_differ else (True,)
    for training in modes:
        for i, case in enumerate(_spread(_module_cases(mi, training), N_MODULE)):
            label = f"{mi.module_cls.__name__} input {i} ({'train' if training else 'eval'})"
            ci, fi = case.constructor_input, case.forward_input
            if fi is None:
                continue
            torch.manual_seed(0)
            try:
                native_m = mi.module_cls(*ci.args, **ci.kwargs).to(torch.float64)
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{label}: cannot build the module: {e}")
            native_m.train(training)
            twin_m = copy.deepcopy(native_m)
            torchbp.swap(twin_m)

            def call(m):
                args, kwargs = _fresh(tuple(fi.args)), _fresh(dict(fi.kwargs))
                params = [p for p in m.parameters() if p.requires_grad]
                leaves_before = params

                try:
                    torch.manual_seed(0)
                    out = m(*args, **kwargs)
                except Exception as e:  # noqa: BLE001
                    raise _Refused("forward", e) from e
                outs = _tensors(out)
                diff = [o for o in outs if o.requires_grad and o.is_floating_point()]
                leaves = [t for t in _tensors((args, kwargs)) if t.requires_grad] + leaves_before
                grads = None
                if diff and leaves:
                    g = torch.Generator().manual_seed(1)
                    vs = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in diff]
                    try:
                        grads = [None if x is None else x.detach() for x in
                                 torch.autograd.grad(diff, leaves, vs, allow_unused=True)]
                    except Exception as e:  # noqa: BLE001
                        raise _Refused("backward", e) from e
                return [o.detach() for o in outs], grads, None, _delta_ran(diff) or not diff, args, \
                    max(1.0, math.sqrt(sum(float(v.norm()) ** 2 for v in vs))) if diff and leaves else 1.0

            native, delta = _pair(lambda: call(native_m), lambda: call(twin_m))
            if native is None:
                continue
            _compare64(native, delta, label)
            buffers_n = dict(native_m.named_buffers())
            for k, b in twin_m.named_buffers():
                _close64(f"{label} buffer {k}", b, buffers_n[k])
            assert delta[3], f"{label}: no δ Function in the output's graph (native fallback)"
