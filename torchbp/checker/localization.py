"""Localization: which layer a failure starts at. ``first_divergence`` is the innermost layer whose
incoming δ agrees but whose outgoing gradients do not; where the rows alone cannot tell (an error
upstream echoes downstream), an isolated check feeds the subject's layer and native autograd the
reference's own input and δ."""
from __future__ import annotations

import contextlib
import warnings

import torch

from ..intercept import manual_backward
from ..swap import swapped
from . import compare
from .capture import differentiable, leaves, quantity, remap, set_rng_state
from .judging import module_name
from .passes import KeepGrads, Pass
from .state import buffers_kept, converted_copy


def _inside(inner: str, outer: str) -> bool:
    inner, outer = module_name(inner), module_name(outer)
    return inner != outer and (outer == "" or inner.startswith(outer + "."))


def _depth(key):
    name = module_name(key)
    return -1 if name == "" else name.count(".")


def common_ancestor(keys):
    """The innermost module holding every one of ``keys`` (a key's own module when there is one)."""
    paths = [module_name(k).split(".") if module_name(k) else [] for k in keys]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def from_rows(bad_keys, rows, order):
    """The innermost layer whose incoming δ agrees but whose outgoing gradients do not (rows only).
    When every failing layer already receives a wrong δ, that δ was sent by code of the module around
    the most downstream of them (its own forward, between its children): that module is named."""
    incoming_bad = {r.layer for r in rows
                    if r.quantity.startswith("grad_output") and r.status in (compare.FAIL, compare.NONFINITE)}
    candidates = [k for k in bad_keys if k not in incoming_bad]
    if not candidates and bad_keys:
        last = module_name(max(bad_keys, key=lambda k: order.get(k, -1)))
        return last.rpartition(".")[0] if last else None
    candidates = [k for k in candidates if not any(_inside(o, k) for o in candidates)]
    return max(candidates, key=lambda k: order.get(k, -1)) if candidates else None


def isolated_check(bad_keys, subject_capture, reference_model, subject_model, inputs, target, loss,
                   dtype, device, seed, route, fork, say, context=()):
    """The innermost failing layer that is wrong on its own (the reference's input and δ), or None."""
    say(f"localizing: isolated check of {len(bad_keys)} layer(s)")
    keys = [k for k in bad_keys if k in subject_capture.order]
    keep = KeepGrads(set(keys))
    replay = Pass(reference_model, inputs, target, loss, keep, seed=seed, device=device, keep_inputs=keys,
                  context=context)
    saved_inputs = replay.capture.inputs
    wrong = []
    for key in sorted(keys, key=_depth, reverse=True):
        if any(_inside(w, key) for w in wrong) or key not in saved_inputs:
            continue
        deltas = {q: g for (k, q), g in keep.store.items() if k == key and q.startswith("grad_output")}
        saved = dict(saved_inputs[key], device=device, fork=fork)
        ref_module = replay.capture.modules.get(key)
        name = module_name(key)
        sub_module = ref_module if route else subject_model.get_submodule(name) if name else subject_model
        if _layer_is_wrong(sub_module, ref_module, saved, deltas, dtype, route, context):
            wrong.append(key)
    if not wrong:
        return None
    inner = [k for k in wrong if not any(_inside(o, k) for o in wrong)]
    return max(inner, key=lambda k: subject_capture.order.get(k, -1))


def _layer_is_wrong(sub_module, ref_module, saved, deltas, dtype, route, context=()) -> bool | None:
    """Feed the subject's layer and native autograd the reference's own input and incoming δ; True
    when the subject's layer is wrong, False when it agrees, None when it could not be run."""
    def run(module, to64=False, routed=False):
        d = torch.float64 if to64 else None
        conv = (lambda t: t.detach().to(dtype=d if (d and t.is_floating_point()) else t.dtype)
                .clone().requires_grad_(t.requires_grad))
        args, kwargs = remap(saved["args"], conv), remap(saved["kwargs"], conv)
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in saved["buffers"]:
                    b.copy_(saved["buffers"][name].to(b.dtype))
        set_rng_state(saved["rng"], saved.get("device"))
        ctx = contextlib.ExitStack()
        if routed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ctx.enter_context(swapped(module))
            ctx.enter_context(manual_backward())
        for cm in context:
            ctx.enter_context(cm)
        with ctx, torch.enable_grad():
            out = module(*args, **kwargs)
        outs = [(p, t) for p, t in leaves(out) if differentiable(t)]
        paths = [p for p, _ in outs]
        pairs = [(t, deltas[quantity("grad_output", paths, p)]) for p, t in outs
                 if quantity("grad_output", paths, p) in deltas]
        if not pairs:
            return None
        ins = [t for _, t in leaves((args, kwargs)) if differentiable(t)]
        wrt = ins + [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad([t for t, _ in pairs], wrt, [dd.to(t) for t, dd in pairs], allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads)]

    try:
        with buffers_kept(ref_module), buffers_kept(sub_module), \
                torch.random.fork_rng(devices=saved.get("fork", [])):
            subject = run(sub_module, routed=route)
            reference = run(ref_module)
            oracle = None
            if dtype != torch.float64 and subject is not None:
                oracle_module = converted_copy(ref_module, torch.float64, saved["device"])
                oracle = run(oracle_module, to64=True)
                del oracle_module
    except Exception:  # the check is a localization aid; a layer it cannot replay stays unjudged
        return None
    if subject is None or reference is None or len(subject) != len(reference):
        return None
    wrong = False
    for i, (a, b) in enumerate(zip(subject, reference)):
        if not compare.finite(a):
            wrong |= compare.finite(b)
            continue
        if oracle is None:
            _, status = compare.judge(compare.metrics(a, b)["rel_err"], dtype)
        else:
            _, status = compare.judge(compare.metrics(a, oracle[i])["rel_err"], dtype,
                                      compare.metrics(b, oracle[i])["rel_err"])
        wrong |= status == compare.FAIL
    return wrong
