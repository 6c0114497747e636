"""The audit's passes: reference (native autograd), optional float64 oracle, subject (δ formulas),
then localization; all from the same state with the same random numbers, leaving the model as found.

Order, so that at most one extra copy of the model exists at a time (two only with ``against=`` when
both models must change dtype or device):

1. lower precision only: the float64 oracle pass (a float64 copy of the reference), grads kept;
2. the reference pass; float64: grads kept; lower precision: each grad is reduced at once to its
   error against the oracle;
3. the subject pass; each grad is compared the moment its hook fires and the kept tensor is dropped;
4. only when a row fails: a reference pass that keeps the inputs of the failing layers, and an
   isolated check per layer (subject's layer vs native on the reference's own inputs and δ).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import platform
import sys
import warnings

import torch

from .. import registry
from ..intercept import manual_backward
from ..swap import swapped
from . import compare as C
from .capture import Capture, differentiable, leaves, quantity, remap, set_rng_state
from .report import AuditReport, Row

# autograd nodes that only cast / reshape / view a tensor: a parameter reaching a δ Function through
# them still has a δ-produced gradient
_PASSTHROUGH = {"ToCopy", "T", "Expand", "View", "UnsafeView", "Reshape", "ReshapeAlias", "Permute",
                "Transpose", "Squeeze", "Unsqueeze", "Clone", "Alias", "AsStrided", "Slice", "Select",
                "Split", "SplitWithSizes", "Unbind", "Chunk", "Contiguous", "Detach", "Conj"}


# --- environment ----------------------------------------------------------------------------------------

def _tf32_flags() -> dict:
    """TF32 settings; on torch >= 2.9 only the fp32_precision API is read (never mixed with the old)."""
    flags = {}
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        flags["matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
        flags["cudnn_conv_fp32_precision"] = torch.backends.cudnn.conv.fp32_precision
        flags["fp32_precision"] = getattr(torch.backends, "fp32_precision", None)
        flags["tf32_matmul"] = flags["matmul_fp32_precision"] == "tf32" or (
            flags["matmul_fp32_precision"] == "none" and flags["fp32_precision"] == "tf32")
        flags["tf32_conv"] = flags["cudnn_conv_fp32_precision"] == "tf32" or (
            flags["cudnn_conv_fp32_precision"] == "none" and flags["fp32_precision"] == "tf32")
    else:
        flags["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        flags["allow_tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        flags["tf32_matmul"] = flags["allow_tf32_matmul"] or flags["float32_matmul_precision"] != "highest"
        flags["tf32_conv"] = flags["allow_tf32_cudnn"]
    return flags


def environment(dtype=None, device=None, seed=None) -> dict:
    """The settings that decide what a gradient audit measures (no timestamps: identical audits give
    identical environments)."""
    import torchbp
    device = torch.device(device) if device is not None else None
    cuda = torch.cuda.is_available()
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    flags = _tf32_flags()
    on_cuda = device is not None and device.type == "cuda"
    fp32 = dtype in (None, torch.float32)
    env = {
        "torchbp": torchbp.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": cuda, "device": str(device) if device is not None else None, "device_name": name,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        **{k: v for k, v in flags.items() if k not in ("tf32_matmul", "tf32_conv")},
        "tf32": bool(on_cuda and fp32 and (flags["tf32_matmul"] or flags["tf32_conv"])),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "num_threads": torch.get_num_threads(), "seed": seed,
    }
    return env


# --- state ----------------------------------------------------------------------------------------------

def _first_float(model, inputs):
    for t in list(model.parameters()) + list(model.buffers()) + [t for _, t in leaves(inputs)]:
        if t.is_floating_point():
            return t
    return None


@contextlib.contextmanager
def _buffers_kept(model):
    """Buffers (BatchNorm running stats, num_batches_tracked) restored in place afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                if b.shape == v.shape and b.dtype == v.dtype:
                    b.copy_(v)


def _copy(model, dtype, device):
    """A converted deep copy, without copying the original's .grad tensors."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        c = copy.deepcopy(model)
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    return c.to(device=device, dtype=dtype)


def _fits(model, dtype, device) -> bool:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device or (t.is_floating_point() and t.dtype != dtype):
            return False
    return True


def _convert(obj, dtype, device):
    """Fresh leaf copies: floating tensors to ``dtype``, every tensor to ``device``."""
    def conv(t):
        c = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
        return c.requires_grad_(t.requires_grad and c.is_floating_point())
    return remap(obj, conv)


def _seed(seed, device):
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()].manual_seed(seed)


def _digest(t: torch.Tensor) -> str:
    b = t.detach().reshape(-1).contiguous().cpu()
    return hashlib.sha256(b.view(torch.uint8).numpy().tobytes()).hexdigest()


# --- losses ---------------------------------------------------------------------------------------------

def _half_squared_error(h, y):
    """The seed's cost ½‖y − h‖² per example, mean over the batch (native ops)."""
    d = h - y
    if d.dim() == 0:
        return 0.5 * d * d
    return 0.5 * (d * d).reshape(d.shape[0], -1).sum(1).mean()


class _InnerProduct:
    """<v, output> with v seeded, of each floating output's shape, rounded to the audit dtype (so the
    float64 oracle sees exactly the same v)."""

    def __init__(self, seed, dtype):
        self.seed, self.dtype, self.vs = seed, dtype, {}

    def __call__(self, out, target=None):
        total = None
        for path, t in leaves(out):
            if not differentiable(t):
                continue
            key = (path, tuple(t.shape))
            if key not in self.vs:
                g = torch.Generator().manual_seed(self.seed + len(self.vs))
                self.vs[key] = torch.randn(t.shape, generator=g, dtype=torch.float64).to(self.dtype).double()
            term = (self.vs[key].to(device=t.device, dtype=t.dtype) * t).sum()
            total = term if total is None else total + term
        if total is None:
            raise RuntimeError("torchbp.audit: the model's output holds no tensor that requires grad")
        return total


def _losses(loss_fn, target, seed, dtype):
    """(loss for the reference side, loss for the subject side)."""
    if loss_fn is not None:
        return loss_fn, loss_fn
    if target is None:
        f = _InnerProduct(seed, dtype)
        return f, f
    from .. import functional
    ours = getattr(functional, "half_squared_error", None)
    return _half_squared_error, (ours if ours is not None else _half_squared_error)


# --- coverage -------------------------------------------------------------------------------------------

def _short(node) -> str:
    n = type(node).__name__
    n = n.rstrip("0123456789")
    return n[:-len("Backward")] if n.endswith("Backward") else n


def _is_delta(node) -> bool:
    return registry.is_delta_function(getattr(type(node), "_forward_cls", None))


def _coverage(loss, params):
    """(covered, reached): parameter tensors whose AccumulateGrad is reached from ``loss``, and those
    of them whose every consumer (looking through casts and views) is a δ Function."""
    ids = {id(p): p for p in params}
    parents, acc, seen, stack = {}, {}, set(), [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None and id(var) in ids:
            acc[id(var)] = node
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(node)
                stack.append(child)

    def covered(node, depth=0):
        ps = parents.get(node, [])
        if not ps or depth > 64:
            return False
        for p in ps:
            if _is_delta(p):
                continue
            if _short(p) in _PASSTHROUGH and covered(p, depth + 1):
                continue
            return False
        return True

    reached = set(acc)
    return {i for i, n in acc.items() if covered(n)}, reached


# --- one pass -------------------------------------------------------------------------------------------

class _Pass:
    """One forward + backward of ``model`` with hooks calling ``sink(key, quantity, grad)``;
    parameter gradients arrive as (module name, parameter name)."""

    def __init__(self, model, inputs, target, loss_fn, sink, *, seed, device, ctx=None,
                 keep_inputs=(), walk=False, repeat=0, on_repeat=None):
        self.capture = Capture(model, sink, keep_inputs, device)
        self.covered = self.reached = None
        with _buffers_kept(model):
            _seed(seed, device)
            args, kwargs = _split_inputs(_fresh(inputs))
            try:
                with torch.enable_grad(), self.capture, (ctx or contextlib.nullcontext()):
                    out = model(*args, **kwargs)
                    loss = loss_fn(out, target)
                    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                        loss = loss.reshape(())
                self.capture.resolve()
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                    raise RuntimeError("torchbp.audit: the loss must be a scalar tensor that requires grad, "
                                       f"got {type(loss).__name__} {getattr(loss, 'shape', '')}")
                named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
                ins = [t for _, t in leaves((args, kwargs)) if differentiable(t)]
                xs = [p for _, p in named] + ins
                if walk:
                    cov, reached = _coverage(loss, [p for _, p in named])
                    self.covered = {n for n, p in named if id(p) in cov}
                    self.reached = {n for n, p in named if id(p) in reached}
                for i in range(1 + repeat):
                    if i:
                        on_repeat()
                    grads = torch.autograd.grad(loss, xs, allow_unused=True, retain_graph=i < repeat)
                    for (n, _), g in zip(named, grads):
                        if g is not None:
                            mod, _, pname = n.rpartition(".")
                            sink(mod, pname, g)
                    del grads
            finally:
                self.capture.remove_tensor_hooks()


def _fresh(inputs):
    return remap(inputs, lambda t: t.detach().clone().requires_grad_(t.requires_grad))


def _split_inputs(inputs):
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields"):
        return tuple(inputs), {}
    return (inputs,), {}


# --- sinks ----------------------------------------------------------------------------------------------

class _Keep:
    """Keeps every grad (detached), or only those of ``keys``."""

    def __init__(self, keys=None):
        self.store, self.keys = {}, keys

    def __call__(self, key, qty, g):
        if self.keys is None or key in self.keys:
            self.store[(key, qty)] = g.detach()


class _ErrVsOracle:
    """Reduces each native grad at once to its relative error against the oracle's."""

    def __init__(self, oracle):
        self.oracle, self.err, self.norms = oracle, {}, {}  # norms: the oracle's, reused by the subject

    def __call__(self, key, qty, g):
        k = (key, qty)
        o = self.oracle.get(k)
        if o is not None and k not in self.err:
            m = C.metrics(g, o)
            self.err[k], self.norms[k] = m["rel_err"], m["ref_norm"]


class _Judge:
    """The subject's sink: compares each grad the moment it arrives and drops the kept one."""

    def __init__(self, kept, dtype, native_err=None, ref_norms=None):
        self.kept, self.dtype, self.native_err, self.ref_norms = kept, dtype, native_err, ref_norms or {}
        self.results, self.digests, self.unstable, self.repeating = {}, {}, set(), False
        self.scale = {}  # key -> norm of the reference δ arriving at that layer

    def __call__(self, key, qty, g):
        k = (key, qty)
        if self.repeating:
            if k in self.digests and _digest(g) != self.digests[k]:
                self.unstable.add(k)
            return
        if k in self.results:
            return
        r = self.kept.pop(k, None)
        self._judge(k, g.detach(), r)

    def _judge(self, k, s, r):
        if s is None:
            s = torch.zeros_like(r)
        if r is None:
            r = torch.zeros(s.shape, dtype=torch.float64, device=s.device)
        m = C.metrics(s, r, self.ref_norms.get(k))
        nat = self.native_err.get(k, math.nan) if self.native_err is not None else None
        key, qty = k
        if qty.startswith("grad_output"):
            self.scale[key] = math.hypot(self.scale.get(key, 0.0), m["ref_norm"])
            factor = 1.0
        else:
            factor = C.scale_factor(m["ref_norm"], self.scale.get(key))
        tol, status = C.judge(m["rel_err"], self.dtype, nat, factor)
        self.results[k] = dict(m, shape=tuple(s.shape), tolerance=tol, status=status, native_rel_err=nat,
                               sha256=_digest(s))
        self.digests[k] = self.results[k]["sha256"]

    def finish(self):
        """Quantities the reference produced but the subject did not: the subject's is zero."""
        for k in list(self.kept):
            self._judge(k, None, self.kept.pop(k))


# --- isolated check -------------------------------------------------------------------------------------

def _isolated(sub_mod, ref_mod, saved, deltas, dtype, route) -> bool | None:
    """Feed the subject's layer and native autograd the reference's own input and incoming δ; True
    when the subject's layer is wrong, False when it agrees, None when it could not be run."""
    def run(mod, to64=False, routed=False):
        d = torch.float64 if to64 else None
        conv = (lambda t: t.detach().to(dtype=d if (d and t.is_floating_point()) else t.dtype)
                .clone().requires_grad_(t.requires_grad))
        args, kwargs = remap(saved["args"], conv), remap(saved["kwargs"], conv)
        with torch.no_grad():
            for name, b in mod.named_buffers():
                if name in saved["buffers"]:
                    b.copy_(saved["buffers"][name].to(b.dtype))
        set_rng_state(saved["rng"], saved.get("device"))
        ctx = contextlib.ExitStack()
        if routed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ctx.enter_context(swapped(mod))
            ctx.enter_context(manual_backward())
        with ctx, torch.enable_grad():
            out = mod(*args, **kwargs)
        outs = [(p, t) for p, t in leaves(out) if differentiable(t)]
        paths = [p for p, _ in outs]
        pairs = [(t, deltas[quantity("grad_output", paths, p)]) for p, t in outs
                 if quantity("grad_output", paths, p) in deltas]
        if not pairs:
            return None
        ins = [t for _, t in leaves((args, kwargs)) if differentiable(t)]
        xs = ins + [p for p in mod.parameters() if p.requires_grad]
        grads = torch.autograd.grad([t for t, _ in pairs], xs, [dd.to(t) for t, dd in pairs], allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]

    try:
        with _buffers_kept(ref_mod), _buffers_kept(sub_mod), torch.random.fork_rng(devices=saved.get("fork", [])):
            s = run(sub_mod, routed=route)
            r = run(ref_mod)
            o = None
            if dtype != torch.float64 and s is not None:
                oracle = _copy(ref_mod, torch.float64, saved["device"])
                o = run(oracle, to64=True)
                del oracle
    except Exception:  # the check is a localization aid; a layer it cannot replay stays unjudged
        return None
    if s is None or r is None or len(s) != len(r):
        return None
    wrong = False
    for i, (a, b) in enumerate(zip(s, r)):
        if not C.finite(a):
            wrong |= C.finite(b)
            continue
        if o is None:
            _, status = C.judge(C.metrics(a, b)["rel_err"], dtype)
        else:
            _, status = C.judge(C.metrics(a, o[i])["rel_err"], dtype, C.metrics(b, o[i])["rel_err"])
        wrong |= status == C.FAIL
    return wrong


def _module_name(key: str) -> str:
    return key.split("#", 1)[0]


def _inside(inner: str, outer: str) -> bool:
    inner, outer = _module_name(inner), _module_name(outer)
    return inner != outer and (outer == "" or inner.startswith(outer + "."))


def _depth(key):
    name = _module_name(key)
    return -1 if name == "" else name.count(".")


# --- the audit ------------------------------------------------------------------------------------------

def audit(model, inputs, target=None, *, loss_fn=None, against=None, dtype=None, device=None,
          reference=None, seed: int = 0, repeat: int = 0, full: bool = False, localize: bool = True,
          oracle: str = "always", oracle_device=None, progress: bool | None = None) -> AuditReport:
    """Compare ``model``'s gradients, layer by layer, through torchbp's δ formulas (the subject) and
    native autograd (the reference). See DESIGN.md "Public API" and "Comparison policy".

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
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torchbp.audit expects a torch.nn.Module, got {type(model).__name__}")
    if against is not None and not isinstance(against, torch.nn.Module):
        raise TypeError(f"torchbp.audit: against must be a torch.nn.Module, got {type(against).__name__}")
    progress = sys.stderr.isatty() if progress is None else progress

    def say(msg):
        if progress:
            print(f"torchbp.audit: {msg}", file=sys.stderr, flush=True)

    ref_model = against if against is not None else model
    t0 = _first_float(ref_model, inputs)
    dtype = dtype or (t0.dtype if t0 is not None else torch.get_default_dtype())
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device is None:
        p = next(iter(ref_model.parameters()), None)
        device = p.device if p is not None else (t0.device if t0 is not None else torch.device("cpu"))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    low = dtype != torch.float64
    oracle_device = device if oracle_device is None else torch.device(oracle_device)
    if oracle_device.type == "cuda" and oracle_device.index is None:
        oracle_device = torch.device("cuda", torch.cuda.current_device())
    env = environment(dtype, device, seed)
    if low:
        env["oracle_device"] = str(oracle_device)
    ref_loss, sub_loss = _losses(loss_fn, target, seed, dtype)
    x = _convert(inputs, dtype, device)
    y = _convert(target, dtype, device)
    fork = sorted({d.index for d in (device, oracle_device) if d.type == "cuda"})

    if oracle not in ("always", "auto"):
        raise ValueError(f"torchbp.audit: oracle must be 'always' or 'auto', got {oracle!r}")
    # oracle="auto": first hold the subject against native autograd directly; ‖s − n‖ ≤ floor·‖n‖
    # implies the oracle rule (err(s, o) ≤ err(n, o) + floor), so the float64 oracle runs only when
    # some row misses that
    plans = [True] if not low else [True] if oracle == "always" else [False, True]

    with torch.random.fork_rng(devices=fork):
        R = ref_model if _fits(ref_model, dtype, device) else _copy(ref_model, dtype, device)
        S = None
        try:
            for use_oracle in plans:
                # 1. oracle, 2. reference (reduced at once to its error vs the oracle)
                native_err = ref_norms = None
                keep = _Keep()
                if low and use_oracle:
                    say("float64 oracle pass")
                    O = _copy(R, torch.float64, oracle_device) if R is ref_model or oracle_device != device \
                        else R.double()
                    _Pass(O, _convert(x, torch.float64, oracle_device), _convert(y, torch.float64, oracle_device),
                          ref_loss, keep, seed=seed, device=oracle_device)
                    if O is R:
                        R.to(dtype)
                    del O
                    say("reference pass (native autograd)")
                    errs = _ErrVsOracle(keep.store)
                    _Pass(R, x, y, ref_loss, errs, seed=seed, device=device)
                    native_err, ref_norms = errs.err, errs.norms
                else:
                    say("reference pass (native autograd)")
                    _Pass(R, x, y, ref_loss, keep, seed=seed, device=device)
                # 3. subject
                if S is None:
                    S = R if against is None else model if _fits(model, dtype, device) else _copy(model, dtype, device)
                judge = _Judge(keep.store, dtype, native_err, ref_norms)
                say("subject pass (δ formulas)" if against is None else "subject pass")
                sp = _Pass(S, x, y, sub_loss if against is None else ref_loss, judge, seed=seed, device=device,
                           ctx=_routing(S) if against is None else None, walk=True, repeat=repeat,
                           on_repeat=lambda: setattr(judge, "repeating", True))
                judge.finish()
                del keep
                rows, bad_keys = _rows(judge, sp, S, against is None)
                if not bad_keys:
                    break
            env["oracle"] = "float64" if (low and use_oracle) else ("skipped: subject within floor of native"
                                                                    if low else None)
            coverage = len(sp.covered) / len(sp.reached) if sp.reached else 0.0
            if reference is not None:
                rows += _numpy_rows(reference, model, x, y, loss_fn, device)
            # 4. localization
            first = None
            if bad_keys:
                first = _localize(bad_keys, rows, sp.capture, R, S, x, y, ref_loss, dtype, device, seed,
                                  route=against is None, fork=fork, say=say) if localize else None
                if first is None:
                    first = _chained(bad_keys, rows, sp.capture.order)
        finally:
            R = S = None  # drop the working copies (if any) before returning
    ok = not any(r.status in ("fail", "nonfinite") for r in rows)
    return AuditReport(ok=ok, rows=rows, first_divergence=_module_name(first) if first is not None else None,
                       coverage=coverage, environment=env, full=full)


@contextlib.contextmanager
def _routing(model):
    """Subject: modules swapped to their twins (exactly restored) and functional calls routed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = swapped(model)
        cm.__enter__()
    try:
        with manual_backward():
            yield
    finally:
        cm.__exit__(None, None, None)


def _rows(judge, sp, S, routed):
    cap = sp.capture
    names = dict((n, m) for n, m in S.named_modules())
    order = cap.order
    rows, bad = [], []

    def kind_of(key):
        if key in cap.kinds:
            return cap.kinds[key]
        m = names.get(_module_name(key))
        from .capture import kind
        return kind(m) if m is not None else "?"

    def rank(item):
        (key, qty), _ = item
        grp = 0 if qty.startswith("grad_output") else 1 if qty.startswith("grad_input") else 2
        return (order.get(key, len(order)), grp)

    for (key, qty), res in sorted(judge.results.items(), key=rank):
        status = res["status"]
        is_param = not (qty.startswith("grad_output") or qty.startswith("grad_input"))
        pname = f"{key}.{qty}" if key else qty
        if routed and is_param and status != C.NONFINITE and pname not in (sp.covered or ()):
            status = C.NATIVE
        rows.append(Row(layer=key, kind=kind_of(key), quantity=qty, shape=res["shape"],
                        max_abs_err=res["max_abs_err"], rel_err=res["rel_err"], cosine=res["cosine"],
                        tolerance=res["tolerance"], status=status, native_rel_err=res["native_rel_err"],
                        norm=res["norm"], ref_norm=res["ref_norm"], sha256=res["sha256"],
                        reproducible=(None if not judge.repeating else (key, qty) not in judge.unstable)))
        if status in (C.FAIL, C.NONFINITE) and key not in bad:
            bad.append(key)
    return rows, bad


def _chained(bad_keys, rows, order):
    """The innermost layer whose incoming δ agrees but whose outgoing gradients do not."""
    incoming_bad = {r.layer for r in rows if r.quantity.startswith("grad_output") and r.status in ("fail", "nonfinite")}
    cands = [k for k in bad_keys if k not in incoming_bad]
    cands = [k for k in cands if not any(_inside(o, k) for o in cands)] or \
            [k for k in bad_keys if not any(_inside(o, k) for o in bad_keys)]
    return max(cands, key=lambda k: order.get(k, -1)) if cands else None


def _localize(bad_keys, rows, sub_cap, R, S, x, y, loss, dtype, device, seed, route, fork, say):
    say(f"localizing: isolated check of {len(bad_keys)} layer(s)")
    keys = [k for k in bad_keys if k in sub_cap.order]
    keep = _Keep(set(keys))
    lp = _Pass(R, x, y, loss, keep, seed=seed, device=device, keep_inputs=keys)
    saved_in = lp.capture.inputs
    wrong = []
    for key in sorted(keys, key=_depth, reverse=True):
        if any(_inside(w, key) for w in wrong) or key not in saved_in:
            continue
        deltas = {q: g for (k, q), g in keep.store.items() if k == key and q.startswith("grad_output")}
        saved = dict(saved_in[key], device=device, fork=fork)
        ref_mod = lp.capture.modules.get(key)
        sub_mod = ref_mod if route else S.get_submodule(_module_name(key)) if _module_name(key) else S
        if _isolated(sub_mod, ref_mod, saved, deltas, dtype, route):
            wrong.append(key)
    if not wrong:
        return None
    inner = [k for k in wrong if not any(_inside(o, k) for o in wrong)]
    return max(inner, key=lambda k: sub_cap.order.get(k, -1))


def _numpy_rows(reference, model, x, y, loss_fn, device):
    """Rows holding a float64 copy of the subject (δ formulas) against torchbp.reference's NumPy
    back-propagation: per Linear layer the δ arriving at it and ∂J/∂W, ∂J/∂b (quantity "… (numpy)")."""
    if reference not in ("numpy", True):
        raise ValueError(f"torchbp.audit: reference must be None or 'numpy', got {reference!r}")
    if loss_fn is not None or not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("torchbp.audit(reference='numpy') needs a (batch, features) input tensor, a target "
                         "tensor and the default loss (the seed's ½‖y − h‖², mean over the batch)")
    from .. import reference as np_ref
    weights, biases, acts = np_ref.from_torch(model)
    x64, y64 = x.detach().double().cpu(), y.detach().double().cpu()
    out = np_ref.backprop(weights, biases, acts, x64.numpy(), y64.numpy())
    linears = [n for n, m in model.named_children() if isinstance(m, torch.nn.Linear)]
    m64 = _copy(model, torch.float64, torch.device("cpu"))
    keep = _Keep(set(linears))
    with _routing(m64):
        _, sub_loss = _losses(None, y64, 0, torch.float64)
        _Pass(m64, x64, y64, sub_loss, keep, seed=0, device=torch.device("cpu"))
    rows = []
    for i, name in enumerate(linears):
        pairs = [("grad_output", out["deltas"][i]), ("weight", out["grad_W"][i]), ("bias", out["grad_b"][i])]
        for qty, want in pairs:
            got = keep.store.get((name, qty))
            if want is None or got is None:
                continue
            m = C.metrics(got, torch.from_numpy(want))
            tol, status = C.judge(m["rel_err"], torch.float64)
            rows.append(Row(layer=name, kind="Linear", quantity=f"{qty} (numpy)", shape=tuple(got.shape),
                            max_abs_err=m["max_abs_err"], rel_err=m["rel_err"], cosine=m["cosine"],
                            tolerance=tol, status=status, norm=m["norm"], ref_norm=m["ref_norm"],
                            sha256=_digest(got)))
    return rows


def assert_gradients_match(model, inputs, target=None, **kwargs) -> AuditReport:
    """``audit(...)``; raises AssertionError carrying the verdict and the failing rows when the
    gradients disagree. Returns the report otherwise."""
    report = audit(model, inputs, target, **kwargs)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
