"""``audit()``: the orchestrator. Its steps, each in a module of its own:

1. plan (this module): dtype, device, oracle, the losses, the inputs converted once;
2. passes (passes.py), from the same state with the same random numbers, at most one extra copy of
   the model alive at a time (two only with ``against=`` when both models must change dtype/device);
   the reference's passes run natively (twins unswapped, the caller's routing suspended: state.py):
   - below float64 only: the float64 oracle pass (a float64 copy of the reference), grads kept
     (``oracle="auto"``: only where some gradient missed floor(dtype) against native, after the
     subject's passes, whose gradients were kept and are judged again against it);
   - the reference pass (native autograd); float64: grads kept; lower precision: each grad reduced
     at once to its error against the oracle;
   - the subject pass, hooked per layer; each grad judged the moment its hook fires (judging.py);
   - the subject as it trains (no hooks: fused runs, fast paths), where it trains otherwise than
     hooked (a fused container, a forward that reads hooks, gradient checkpoints, ``against=``;
     ``environment["as_trained"]`` says why it ran or was not needed); its parameter gradients judged
     (where only they disagree, the module around them, which fused them, is named);
3. localization (localization.py), only when a row fails;
4. the report (report.py), with the environment (environment.py).
"""
from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass, field

import torch

from . import compare
from .env import environment
from .judging import AS_TRAINED, ErrorsVsOracle, Judge, build_rows, module_name
from .localization import common_ancestor, from_rows, isolated_check
from .losses import losses_for
from .passes import KeepGrads, Pass, routing
from .precision import Float64Throughout
from .report import AuditReport
from .state import (RandomSources, convert, converted_copy, first_float, function_modes_suspended,
                    has_lazy_parameters, modes_entered, native_classes, seed_generators, split_inputs,
                    working_model)


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
    random: RandomSources
    float64: Float64Throughout  # shared by every float64 pass: lower-precision islands upgraded
    caller_modes: list    # the caller's TorchFunctionModes, suspended (re-entered for an ``against`` subject)
    # working copy -> the model it was converted from (each pass restores the copy from it: no clone)
    originals: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def original_of(self, model):
        """The model ``model`` is a converted copy of, or None (the model itself, a materialised copy)."""
        return self.originals.get(model)

    def working(self, model):
        """``model`` itself when it fits the audit's dtype and device, else a converted copy (recorded)."""
        copy = working_model(model, self.dtype, self.device)
        if copy is not model:
            self.originals[copy] = model
        return copy

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

    def native_context(self, dtype):
        """Context of a native pass in ``dtype``: float64 throughout in a float64 pass."""
        return (self.float64,) if dtype == torch.float64 else ()

    def subject_context(self, subject_model):
        """The subject's routing (or, with ``against``, the caller's own modes), float64 on top."""
        routing_context = routing(subject_model) if self.routed else modes_entered(self.caller_modes)
        return (routing_context, *self.native_context(self.dtype))


def _cuda_index(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_arguments(model, against, oracle, seed, repeat):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torchbp.audit expects a torch.nn.Module, got {type(model).__name__}")
    if against is not None and not isinstance(against, torch.nn.Module):
        raise TypeError(f"torchbp.audit: against must be a torch.nn.Module, got {type(against).__name__}")
    if oracle not in ("always", "auto"):
        raise ValueError(f"torchbp.audit: oracle must be 'always' or 'auto', got {oracle!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
        raise ValueError(f"torchbp.audit: repeat must be an integer >= 0 (extra backward passes), got {repeat!r}")
    try:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError
        torch.Generator().manual_seed(seed)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"torchbp.audit: seed must be an integer in [-2**63, 2**64), got {seed!r}") from None
    if torch.is_inference_mode_enabled():
        raise RuntimeError("torchbp.audit cannot run under torch.inference_mode(): inference mode records no "
                           "gradients at all; call the audit outside the inference_mode block")


def _plan(model, inputs, target, loss_fn, against, dtype, device, oracle, oracle_device, seed, repeat,
          caller_modes):
    reference_model = against if against is not None else model
    first = first_float(reference_model, inputs)
    dtype = torch.float64 if dtype is None else getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"torchbp.audit: dtype must be a floating torch.dtype, got {dtype!r}")
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
                 fork=sorted({d.index for d in (device, oracle_device) if d.type == "cuda"}),
                 random=RandomSources(model), float64=Float64Throughout(), caller_modes=caller_modes)


def _working_reference(plan, original):
    """The model the reference pass runs: ``original`` itself when it fits the audit's dtype and
    device, else a converted copy. A model with lazy (uninitialised) parameters is materialised once,
    on a copy, so that every pass (oracle included) sees the same weights and the user's model stays
    uninitialised."""
    if not has_lazy_parameters(original):
        return plan.working(original)
    materialised = converted_copy(original, plan.dtype, plan.device)
    args, kwargs = split_inputs(plan.inputs)
    with torch.no_grad():
        seed_generators(plan.seed, plan.device)
        materialised(*args, **kwargs)
    return materialised


def _oracle_pass(plan, reference_model, original, say):
    """The float64 oracle's gradients (a float64 copy of the reference, on ``oracle_device``)."""
    say("float64 oracle pass")
    keep = KeepGrads()
    source = plan.original_of(reference_model)
    if reference_model is original or plan.oracle_device != plan.device:
        oracle_model = converted_copy(reference_model, torch.float64, plan.oracle_device)
        source = reference_model if source is None else source
    else:
        oracle_model = reference_model.double()  # a working copy already: converted back below
    Pass(oracle_model, convert(plan.inputs, torch.float64, plan.oracle_device),
         convert(plan.target, torch.float64, plan.oracle_device), plan.reference_loss, keep,
         seed=plan.seed, device=plan.oracle_device, random=plan.random,
         context=plan.native_context(torch.float64), native_only=True, source=source)
    if oracle_model is reference_model:
        reference_model.to(plan.dtype)
    return keep.store


def _reference_pass(plan, reference_model, oracle_grads, say):
    """The reference's gradients kept (no oracle), or reduced to their errors against the oracle."""
    say("reference pass (native autograd)")
    sink = KeepGrads() if oracle_grads is None else ErrorsVsOracle(oracle_grads)
    reference = Pass(reference_model, plan.inputs, plan.target, plan.reference_loss, sink, seed=plan.seed,
                     device=plan.device, random=plan.random, context=plan.native_context(plan.dtype),
                     native_only=True, source=plan.original_of(reference_model))
    if oracle_grads is None:
        return sink.store, None, None, reference.loss_value
    return oracle_grads, sink.err, sink.norms, reference.loss_value


def _against_oracle(plan, reference_model, original_reference, judge, trained, say):
    """``oracle="auto"`` where some gradient missed floor(dtype) against native: the float64 oracle's
    gradients and native's errors against them, and every subject gradient, kept from the passes that
    produced it, judged again against the oracle (the subject's passes are not run again: the same
    code on the same inputs gives the same gradients). (judge, as-trained judge, reference loss)."""
    oracle_grads = _oracle_pass(plan, reference_model, original_reference, say)
    oracle_grads, native_err, ref_norms, reference_loss = _reference_pass(plan, reference_model, oracle_grads, say)
    say("judging the subject's gradients against the float64 oracle")
    again = judge.replay(oracle_grads, native_err, ref_norms)
    del oracle_grads
    trained_again = None if trained is None else trained.replay(again.parameter_refs, native_err, ref_norms,
                                                                 scale=again.scale)
    again.parameter_refs.clear()
    return again, trained_again, reference_loss


def _forward_gap(plan, reference_loss, subject_loss):
    """The two passes' losses when they differ by more than rounding (their forward computations
    differ: randomness the audit cannot share, such as a generator held outside the model), else None."""
    tol = 1e-6 if plan.dtype == torch.float64 else 10 * compare.floor(plan.dtype)
    if reference_loss is None or subject_loss is None:
        return None
    if math.isfinite(reference_loss) and math.isfinite(subject_loss) and \
            abs(subject_loss - reference_loss) <= tol * max(abs(reference_loss), abs(subject_loss), 1e-30):
        return None
    if not (math.isfinite(reference_loss) or math.isfinite(subject_loss)):
        return None  # both nonfinite: the rows say so
    return {"reference_loss": reference_loss, "subject_loss": subject_loss}


def _subject_pass(plan, subject_model, judge, say):
    """The subject's forward and backward with a hook on every layer, each gradient judged as it
    arrives."""
    say("subject pass (δ formulas)" if plan.routed else "subject pass")
    def drop_unneeded_references(subject):
        if _as_trained_needed(plan, subject) is None:  # known from the forward: no pass as trained follows,
            judge.parameter_refs.clear()  # so each parameter's reference goes the moment it is judged
    subject = Pass(subject_model, plan.inputs, plan.target, plan.subject_loss, judge, seed=plan.seed,
                   device=plan.device, random=plan.random, context=plan.subject_context(subject_model),
                   walk=True, repeat=plan.repeat, on_repeat=lambda: setattr(judge, "repeating", True),
                   source=plan.original_of(subject_model), before_backward=drop_unneeded_references)
    judge.finish()
    return subject


AS_TRAINED_SKIPPED = ("skipped: the subject runs the same code with and without the audit's hooks (no fused "
                      "container, no forward that reads hooks, no gradient checkpoint)")


def _as_trained_needed(plan, subject) -> str | None:
    """Why the subject must also run as it trains (no hooks), or None when that pass would verify
    nothing new: the routed subject runs torchbp's code, whose only paths that hooks switch off are
    fused containers and gradient checkpoints, found during the hooked pass, plus any module whose
    own forward reads hooks. A subject given with ``against`` runs its own code: always."""
    if not plan.routed:
        return "the subject's own code (against=)"
    reasons = []
    if subject.hook_dependent:
        names = [module_name(k) or "<root>" for k in subject.hook_dependent]
        reasons.append(f"runs otherwise without hooks: {', '.join(names[:4])}{', …' if len(names) > 4 else ''}")
    if "checkpoint" in subject.inline:
        reasons.append("gradient checkpoints (run inline under the hooks)")
    return "; ".join(reasons) or None


def _as_trained_pass(plan, subject_model, reference_model, judge, env, say):
    """The subject exactly as it trains: no hooks, so fused runs (a swapped ``nn.Sequential``'s
    dense_stack), every fast path the hooks would switch off and gradient checkpointing run; its
    parameter gradients are judged against the same reference. A parameter that gets no gradient at
    all as trained is judged as zero, unless native autograd as trained gives it none either (a
    reentrant checkpoint whose inputs need no gradient): then it is named in the environment."""
    say("subject pass as trained (no hooks)")
    trained = judge.for_parameters()
    Pass(subject_model, plan.inputs, plan.target, plan.subject_loss, trained, seed=plan.seed,
         device=plan.device, random=plan.random, context=plan.subject_context(subject_model), hooked=False,
         source=plan.original_of(subject_model))
    if trained.kept:
        reached = KeepGrads()
        Pass(reference_model, plan.inputs, plan.target, plan.reference_loss, reached, seed=plan.seed,
             device=plan.device, random=plan.random, context=plan.native_context(plan.dtype), hooked=False,
             native_only=True, source=plan.original_of(reference_model))
        unreached = sorted(k for k in trained.kept if k not in reached.store)
        for k in unreached:
            del trained.kept[k]
        if unreached:
            env["no_gradient_as_trained"] = [f"{key}.{qty}" if key else qty for key, qty in unreached]
    trained.finish()
    return trained


def audit(model, inputs, target=None, *, loss_fn=None, against=None, dtype=None, device=None,
          reference=None, seed: int = 0, repeat: int = 0, full: bool = False, localize: bool = True,
          oracle: str = "always", oracle_device=None, progress: bool | None = None) -> AuditReport:
    """Compare ``model``'s gradients, layer by layer, through torchbp's δ formulas (the subject) and
    native autograd (the reference). See docs/design.md, "The audit" and "Comparison policy".

    - ``inputs``: a tensor, a tuple (positional arguments) or a dict (keyword arguments).
    - ``loss_fn(output, target) -> scalar``; default: the derivation's ½‖y − h‖² (mean over the batch) with a
      target, ``<v, output>`` for a seeded random v without.
    - ``against=ref``: the subject is ``model`` as given (its own backward), the reference ``ref``
      under native autograd; layers matched by qualified name.
    - ``dtype``: default float64 (a float64 copy when the model is not float64: the strongest check,
      rel err <= 1e-10; requests for lower precision inside the model are upgraded, on both sides,
      and listed in ``environment["float64_upgraded"]``). A lower dtype audits a copy in that dtype
      against a float64 oracle. ``device``: default the model's. The model itself is never converted.
    - ``reference="numpy"``: also hold a float64 copy of the subject against torchbp.reference's
      independent NumPy back-propagation (an ``nn.Sequential`` of Linear + activation, with a target
      and the default loss); those rows have quantities "grad_output (numpy)", "weight (numpy)", ….
    - ``repeat=N`` (N >= 0): run the subject's backward N more times; rows whose gradient changed
      bitwise get ``reproducible=False`` (shown in the verdict; does not make the report fail).
    - ``full``: ``str(report)`` shows every row, not only failing ones, on big models.
    - ``localize``: on a failure, run the isolated per-layer check that names ``first_divergence``.
    - ``oracle`` (below float64): "always" runs the float64 oracle and reports both errors; "auto"
      first compares subject and native directly and runs the oracle only if some gradient differs
      by more than floor(dtype) (a pass there implies the oracle rule; rows then hold the error vs
      native and ``native_rel_err`` None; ``environment["oracle"]`` says which). Faster where it passes.
    - ``oracle_device``: where the float64 oracle runs (default: ``device``). ``"cpu"`` judges a GPU's
      float32/TF32/bf16 gradients against a float64 computation that shares none of the GPU's kernels.
      Random layers (dropout) draw their masks from that device's generator, so a model that samples
      in train mode needs the oracle on its own device.
    - ``progress``: phase messages on stderr (default: when stderr is a terminal).

    The reference is native autograd whatever state the model and the caller are in: modules already
    swapped to their twins run natively there, and the caller's ``manual_backward()`` (any
    TorchFunctionMode) is suspended. The subject runs hooked per layer, and, where it would train
    otherwise without hooks (a fused container, a forward that reads hooks, gradient checkpoints, a
    subject given with ``against``), once more as it trains, whose parameter gradients are judged too;
    ``environment["as_trained"]`` says which and why. The model is left exactly as found:
    parameters and buffers (the same objects, bit for bit), ``.grad``, training flags, classes, RNG
    states (torch's, generators the model holds, numpy's and Python's).
    """
    _check_arguments(model, against, oracle, seed, repeat)
    progress = sys.stderr.isatty() if progress is None else progress

    def say(msg):
        if progress:
            print(f"torchbp.audit: {msg}", file=sys.stderr, flush=True)

    original_reference = against if against is not None else model
    with function_modes_suspended() as caller_modes, native_classes(original_reference) as twins:
        plan = _plan(model, inputs, target, loss_fn, against, dtype, device, oracle, oracle_device, seed, repeat,
                     caller_modes)
        env = environment(plan.dtype, plan.device, seed)
        if plan.low:
            env["oracle_device"] = str(plan.oracle_device)
        try:
            with torch.random.fork_rng(devices=plan.fork):
                report = _run(plan, model, against, original_reference, reference, loss_fn, localize, env, say)
        finally:
            plan.random.restore()
    if twins:
        env["native_reference_for_swapped"] = twins
    if caller_modes:
        env["caller_modes_suspended_for_reference"] = [type(m).__qualname__ for m in caller_modes]
    if plan.float64.upgraded:
        env["float64_upgraded"] = sorted(plan.float64.upgraded)
    report.full = full
    return report


def _run(plan, model, against, original_reference, reference, loss_fn, localize, env, say):
    """The passes, the judging and the localization (see the module docstring)."""
    reference_model = _working_reference(plan, original_reference)
    subject_model = None
    try:
        rounds = plan.oracle_rounds()
        use_oracle, auto = rounds[0], len(rounds) > 1
        oracle_grads = _oracle_pass(plan, reference_model, original_reference, say) if use_oracle else None
        kept, native_err, ref_norms, reference_loss = _reference_pass(plan, reference_model, oracle_grads, say)
        del oracle_grads
        subject_model = reference_model if plan.routed else plan.working(model)
        judge = Judge(kept, plan.dtype, native_err, ref_norms, keep_subjects=auto)
        del kept
        subject = _subject_pass(plan, subject_model, judge, say)
        if auto and not any(r["status"] in (compare.FAIL, compare.NONFINITE) for r in judge.results.values()):
            judge.subjects = None  # the hooked pass agrees with native: its gradients go (memory)
        why = _as_trained_needed(plan, subject)
        env["as_trained"] = f"run: {why}" if why else AS_TRAINED_SKIPPED
        trained = _as_trained_pass(plan, subject_model, reference_model, judge, env, say) if why else None
        judge.parameter_refs.clear()
        rows, bad_keys = build_rows(judge, subject, subject_model, plan.routed, as_trained=trained)
        if bad_keys and auto:
            use_oracle = True
            if judge.subjects is not None:
                judge, trained, reference_loss = _against_oracle(plan, reference_model, original_reference, judge,
                                                                 trained, say)
            else:  # only the pass as trained missed the floor: both subject passes again, against the oracle
                oracle_grads = _oracle_pass(plan, reference_model, original_reference, say)
                kept, native_err, ref_norms, reference_loss = _reference_pass(plan, reference_model, oracle_grads,
                                                                              say)
                judge = Judge(kept, plan.dtype, native_err, ref_norms)
                del oracle_grads, kept
                subject = _subject_pass(plan, subject_model, judge, say)
                trained = _as_trained_pass(plan, subject_model, reference_model, judge, env, say)
                judge.parameter_refs.clear()
            rows, bad_keys = build_rows(judge, subject, subject_model, plan.routed, as_trained=trained)
        judge = trained = None  # (the subject gradients kept for the oracle, if any)
        env["oracle"] = "float64" if (plan.low and use_oracle) else (
            "skipped: subject within floor of native" if plan.low else None)
        coverage = len(subject.covered) / len(subject.reached) if subject.reached else 0.0
        if reference is not None:
            from .numpy_reference import numpy_rows
            rows += numpy_rows(reference, model, plan.inputs, plan.target, loss_fn, plan.device)
        first = None
        gap = _forward_gap(plan, reference_loss, subject.loss_value)
        if gap is not None and bad_keys:
            env["forward_differs"] = gap  # the verdict names this instead of a layer
        elif bad_keys and all(r.quantity.endswith(AS_TRAINED) for r in rows
                              if r.status in (compare.FAIL, compare.NONFINITE)):
            # only the run without hooks disagrees: a fused run or a fast path of the module around them
            env["diverges_as_trained_only"] = True
            first = common_ancestor(bad_keys)
        elif bad_keys:
            if localize:
                first = isolated_check(bad_keys, subject.capture, reference_model, subject_model, plan.inputs,
                                       plan.target, plan.reference_loss, plan.dtype, plan.device, plan.seed,
                                       route=plan.routed, fork=plan.fork, say=say,
                                       context=plan.native_context(plan.dtype))
            if first is None:
                first = from_rows(bad_keys, rows, subject.capture.order)
    finally:
        reference_model = subject_model = None  # drop the working copies (if any) before returning
    ok = not any(r.status in ("fail", "nonfinite") for r in rows)
    return AuditReport(ok=ok, rows=rows, first_divergence=module_name(first) if first is not None else None,
                       coverage=coverage, environment=env)


def assert_gradients_match(model, inputs, target=None, **kwargs) -> AuditReport:
    """``audit(...)``; raises AssertionError carrying the verdict and the failing rows when the
    gradients disagree. Returns the report otherwise."""
    report = audit(model, inputs, target, **kwargs)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
