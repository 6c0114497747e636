"""``audit()``: the orchestrator. Its steps, each in a module of its own:

1. plan (this module): dtype, device, oracle, the losses, the inputs converted once;
2. passes (passes.py), from the same state with the same random numbers, at most one extra copy of
   the model alive at a time (two only with ``against=`` when both models must change dtype/device):
   - below float64 only: the float64 oracle pass (a float64 copy of the reference), grads kept;
   - the reference pass (native autograd); float64: grads kept; lower precision: each grad reduced
     at once to its error against the oracle;
   - the subject pass; each grad judged the moment its hook fires (judging.py);
3. localization (localization.py), only when a row fails;
4. the report (report.py), with the environment (environment.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .env import environment
from .judging import ErrorsVsOracle, Judge, build_rows, module_name
from .localization import from_rows, isolated_check
from .losses import losses_for
from .passes import KeepGrads, Pass, routing
from .report import AuditReport
from .state import convert, converted_copy, first_float, working_model


@dataclass
class _Plan:
    """What one audit runs: resolved from the arguments before any pass."""
    dtype: torch.dtype
    device: torch.device
    oracle_device: torch.device
    oracle: str
    seed: int
    inputs: object
    target: object
    reference_loss: object
    subject_loss: object
    routed: bool          # subject = the model routed through δ formulas (no ``against``)
    repeat: int
    fork: list            # CUDA devices whose generators the audit forks

    @property
    def low(self) -> bool:
        return self.dtype != torch.float64

    def oracle_rounds(self):
        """float64: one round without oracle. Below: "always" one round with the oracle; "auto" first
        the subject against native directly (‖s − n‖ ≤ floor·‖n‖ implies the oracle rule), and the
        oracle only when some row misses that."""
        if not self.low:
            return [False]
        return [True] if self.oracle == "always" else [False, True]


def _cuda_index(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_arguments(model, against, oracle):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torchbp.audit expects a torch.nn.Module, got {type(model).__name__}")
    if against is not None and not isinstance(against, torch.nn.Module):
        raise TypeError(f"torchbp.audit: against must be a torch.nn.Module, got {type(against).__name__}")
    if oracle not in ("always", "auto"):
        raise ValueError(f"torchbp.audit: oracle must be 'always' or 'auto', got {oracle!r}")


def _plan(model, inputs, target, loss_fn, against, dtype, device, oracle, oracle_device, seed, repeat):
    reference_model = against if against is not None else model
    first = first_float(reference_model, inputs)
    dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device is None:
        p = next(iter(reference_model.parameters()), None)
        device = p.device if p is not None else (first.device if first is not None else torch.device("cpu"))
    device = _cuda_index(torch.device(device))
    oracle_device = device if oracle_device is None else _cuda_index(torch.device(oracle_device))
    reference_loss, subject_loss = losses_for(loss_fn, target, seed, dtype)
    return _Plan(dtype=dtype, device=device, oracle_device=oracle_device, oracle=oracle, seed=seed,
                 inputs=convert(inputs, dtype, device), target=convert(target, dtype, device),
                 reference_loss=reference_loss, subject_loss=subject_loss if against is None else reference_loss,
                 routed=against is None, repeat=repeat,
                 fork=sorted({d.index for d in (device, oracle_device) if d.type == "cuda"}))


def _oracle_pass(plan, reference_model, original, say):
    """The float64 oracle's gradients (a float64 copy of the reference, on ``oracle_device``)."""
    say("float64 oracle pass")
    keep = KeepGrads()
    if reference_model is original or plan.oracle_device != plan.device:
        oracle_model = converted_copy(reference_model, torch.float64, plan.oracle_device)
    else:
        oracle_model = reference_model.double()  # a working copy already: converted back below
    Pass(oracle_model, convert(plan.inputs, torch.float64, plan.oracle_device),
         convert(plan.target, torch.float64, plan.oracle_device), plan.reference_loss, keep,
         seed=plan.seed, device=plan.oracle_device)
    if oracle_model is reference_model:
        reference_model.to(plan.dtype)
    return keep.store


def _reference_pass(plan, reference_model, oracle_grads, say):
    """The reference's gradients kept (no oracle), or reduced to their errors against the oracle."""
    say("reference pass (native autograd)")
    if oracle_grads is None:
        keep = KeepGrads()
        Pass(reference_model, plan.inputs, plan.target, plan.reference_loss, keep, seed=plan.seed,
             device=plan.device)
        return keep.store, None, None
    errors = ErrorsVsOracle(oracle_grads)
    Pass(reference_model, plan.inputs, plan.target, plan.reference_loss, errors, seed=plan.seed,
         device=plan.device)
    return oracle_grads, errors.err, errors.norms


def _subject_pass(plan, subject_model, judge, say):
    """The subject's forward and backward, each gradient judged as it arrives."""
    say("subject pass (δ formulas)" if plan.routed else "subject pass")
    subject = Pass(subject_model, plan.inputs, plan.target, plan.subject_loss, judge, seed=plan.seed,
                   device=plan.device, ctx=routing(subject_model) if plan.routed else None, walk=True,
                   repeat=plan.repeat, on_repeat=lambda: setattr(judge, "repeating", True))
    judge.finish()
    return subject


def audit(model, inputs, target=None, *, loss_fn=None, against=None, dtype=None, device=None,
          reference=None, seed: int = 0, repeat: int = 0, full: bool = False, localize: bool = True,
          oracle: str = "always", oracle_device=None, progress: bool | None = None) -> AuditReport:
    """Compare ``model``'s gradients, layer by layer, through torchbp's δ formulas (the subject) and
    native autograd (the reference). See docs/design.md, "The audit" and "Comparison policy".

    - ``inputs``: a tensor, a tuple (positional arguments) or a dict (keyword arguments).
    - ``loss_fn(output, target) -> scalar``; default: the seed's ½‖y − h‖² (mean over the batch) with a
      target, ``<v, output>`` for a seeded random v without.
    - ``against=ref``: the subject is ``model`` as given (its own backward), the reference ``ref``
      under native autograd; layers matched by qualified name.
    - ``dtype`` / ``device``: audit a converted copy (the model itself is never converted).
      float64 passes at rel err <= 1e-10; lower precision against a float64 oracle.
    - ``reference="numpy"``: also hold a float64 copy of the subject against torchbp.reference's
      independent NumPy back-propagation (an ``nn.Sequential`` of Linear + activation, with a target
      and the default loss); those rows have quantities "grad_output (numpy)", "weight (numpy)", ….
    - ``repeat=N``: run the subject's backward N more times; rows whose gradient changed bitwise get
      ``reproducible=False`` (shown in the verdict; does not make the report fail).
    - ``full``: ``str(report)`` shows every row, not only failing ones, on big models.
    - ``localize``: on a failure, run the isolated per-layer check that names ``first_divergence``.
    - ``oracle`` (below float64): "always" runs the float64 oracle and reports both errors; "auto"
      first compares subject and native directly and runs the oracle only if some gradient differs
      by more than floor(dtype) (a pass there implies the oracle rule; rows then hold the error vs
      native and ``native_rel_err`` None; ``environment["oracle"]`` says which). About 2x faster.
    - ``oracle_device``: where the float64 oracle runs (default: ``device``). ``"cpu"`` judges a GPU's
      float32/TF32/bf16 gradients against a float64 computation that shares none of the GPU's kernels.
      Random layers (dropout) draw their masks from that device's generator, so a model that samples
      in train mode needs the oracle on its own device.
    - ``progress``: phase messages on stderr (default: when stderr is a terminal).

    The model is left exactly as found: parameters, buffers, ``.grad``, training flags, RNG states.
    """
    _check_arguments(model, against, oracle)
    progress = sys.stderr.isatty() if progress is None else progress

    def say(msg):
        if progress:
            print(f"torchbp.audit: {msg}", file=sys.stderr, flush=True)

    plan = _plan(model, inputs, target, loss_fn, against, dtype, device, oracle, oracle_device, seed, repeat)
    env = environment(plan.dtype, plan.device, seed)
    if plan.low:
        env["oracle_device"] = str(plan.oracle_device)
    original_reference = against if against is not None else model

    with torch.random.fork_rng(devices=plan.fork):
        reference_model = working_model(original_reference, plan.dtype, plan.device)
        subject_model = None
        try:
            for use_oracle in plan.oracle_rounds():
                oracle_grads = _oracle_pass(plan, reference_model, original_reference, say) if use_oracle else None
                kept, native_err, ref_norms = _reference_pass(plan, reference_model, oracle_grads, say)
                del oracle_grads
                if subject_model is None:
                    subject_model = reference_model if plan.routed else working_model(model, plan.dtype, plan.device)
                judge = Judge(kept, plan.dtype, native_err, ref_norms)
                subject = _subject_pass(plan, subject_model, judge, say)
                del kept
                rows, bad_keys = build_rows(judge, subject, subject_model, plan.routed)
                if not bad_keys:
                    break
            env["oracle"] = "float64" if (plan.low and use_oracle) else (
                "skipped: subject within floor of native" if plan.low else None)
            coverage = len(subject.covered) / len(subject.reached) if subject.reached else 0.0
            if reference is not None:
                from .numpy_reference import numpy_rows
                rows += numpy_rows(reference, model, plan.inputs, plan.target, loss_fn, plan.device)
            first = None
            if bad_keys:
                if localize:
                    first = isolated_check(bad_keys, subject.capture, reference_model, subject_model, plan.inputs,
                                           plan.target, plan.reference_loss, plan.dtype, plan.device, plan.seed,
                                           route=plan.routed, fork=plan.fork, say=say)
                if first is None:
                    first = from_rows(bad_keys, rows, subject.capture.order)
        finally:
            reference_model = subject_model = None  # drop the working copies (if any) before returning
    ok = not any(r.status in ("fail", "nonfinite") for r in rows)
    return AuditReport(ok=ok, rows=rows, first_divergence=module_name(first) if first is not None else None,
                       coverage=coverage, environment=env, full=full)


def assert_gradients_match(model, inputs, target=None, **kwargs) -> AuditReport:
    """``audit(...)``; raises AssertionError carrying the verdict and the failing rows when the
    gradients disagree. Returns the report otherwise."""
    report = audit(model, inputs, target, **kwargs)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
