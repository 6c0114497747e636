"""Judging: the sinks that turn each gradient into a verdict the moment it arrives (against the kept
reference, and below float64 against the float64 oracle), and the report's rows."""
from __future__ import annotations

import math

import torch

from . import compare
from .capture import kind
from .report import Row
from .state import digest


def module_name(key: str) -> str:
    """The qualified module name of a capture key (``name#n`` is the n-th call of ``name``)."""
    return key.split("#", 1)[0]


class ErrorsVsOracle:
    """A sink reducing each native grad at once to its relative error against the oracle's."""

    def __init__(self, oracle):
        self.oracle, self.err, self.norms = oracle, {}, {}  # norms: the oracle's, reused by the subject

    def __call__(self, key, qty, g):
        k = (key, qty)
        o = self.oracle.get(k)
        if o is not None and k not in self.err:
            m = compare.metrics(g, o)
            self.err[k], self.norms[k] = m["rel_err"], m["ref_norm"]


class Judge:
    """The subject's sink: compares each grad the moment it arrives and drops the kept one."""

    def __init__(self, kept, dtype, native_err=None, ref_norms=None, scale=None, keep_subjects=False,
                 hooked=None):
        self.kept, self.dtype, self.native_err, self.ref_norms = kept, dtype, native_err, ref_norms or {}
        # the as-trained judge: the hooked pass's digests (a gradient bitwise the same as there gets no
        # row of its own, so it need not be kept for ``replay``)
        self.hooked = hooked
        self._last = None  # (subject, reference, ref_norm, metrics, digest) of the gradient judged last
        self.results, self.digests, self.unstable, self.repeating = {}, {}, set(), False
        self.scale = {} if scale is None else scale  # key -> norm of the reference δ arriving at that layer
        # the parameters' references, kept for the as-trained pass (the same tensors: no copy)
        self.parameter_refs = {k: v for k, v in kept.items() if _is_parameter(k[1])}
        # keep_subjects: every subject gradient judged, in arrival order (each takes the place of the
        # reference it was judged against, which is dropped), to be judged again by ``replay``
        self.subjects = {} if keep_subjects else None

    def for_parameters(self):
        """A judge of the parameter gradients again, against the same references and δ scales (the
        subject's as-trained pass)."""
        return Judge(dict(self.parameter_refs), self.dtype, self.native_err, self.ref_norms, self.scale,
                     keep_subjects=self.subjects is not None, hooked=self.digests)

    def replay(self, kept, native_err, ref_norms, scale=None):
        """A judge of the same subject gradients (kept: ``keep_subjects``), in the order they arrived,
        against other references: the float64 oracle's, with native's errors against it. Exactly what
        this judge judged is judged again, nothing more."""
        again = Judge(kept, self.dtype, native_err, ref_norms, scale)
        again.repeating, again.unstable = self.repeating, set(self.unstable)
        for k, subject in self.subjects.items():
            again._judge(k, subject, again.kept.pop(k, None))
        again.kept.clear()
        return again

    def __call__(self, key, qty, g):
        k = (key, qty)
        if self.repeating:
            if k in self.digests and digest(g) != self.digests[k]:
                self.unstable.add(k)
            return
        if k in self.results:
            return
        self._judge(k, g.detach(), self.kept.pop(k, None))

    def _judge(self, k, subject, reference):
        if self.subjects is not None:
            self.subjects[k] = subject
        if subject is None:
            subject = torch.zeros_like(reference)
        if reference is None:
            reference = torch.zeros(subject.shape, dtype=torch.float64, device=subject.device)
        ref_norm = self.ref_norms.get(k)
        if _is_parameter(k[1]):
            self._last = None  # the last δ goes before a parameter's gradient is judged
        last = self._last
        if last is not None and _same(subject, last[0]) and _same(reference, last[1]) and ref_norm == last[2]:
            # the tensors judged just before (a layer's grad_input is its predecessor's grad_output)
            m, sha = dict(last[3]), last[4]
        else:
            m, sha = compare.metrics(subject, reference, ref_norm), digest(subject)
            # a δ is held until the next one arrives (so its memory is not reused); parameters' gradients
            # come last, from no chain: none held
            self._last = None if _is_parameter(k[1]) else (subject, reference, ref_norm, dict(m), sha)
        native = self.native_err.get(k, math.nan) if self.native_err is not None else None
        key, qty = k
        if qty.startswith("grad_output"):
            self.scale[key] = math.hypot(self.scale.get(key, 0.0), m["ref_norm"])
            factor = 1.0
        else:
            factor = compare.scale_factor(m["ref_norm"], self.scale.get(key))
        tol, status = compare.judge(m["rel_err"], self.dtype, native, factor)
        self.results[k] = dict(m, shape=tuple(subject.shape), tolerance=tol, status=status,
                               native_rel_err=native, sha256=sha, tolerance_scale=factor)
        self.digests[k] = sha
        if self.subjects is not None and self.hooked is not None and self.hooked.get(k) == sha:
            del self.subjects[k]  # as trained, bitwise the hooked pass's gradient: no row, nothing to replay

    def finish(self):
        """Quantities the reference produced but the subject did not: the subject's is zero."""
        for k in list(self.kept):
            self._judge(k, None, self.kept.pop(k))


def _same(a, b) -> bool:
    """Whether two tensors are the same values: one tensor, or views of the same memory with the same
    layout, dtype and version (``b`` is held alive, so its memory cannot have been reused)."""
    if a is b:
        return True
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device and a._version == b._version and a.numel() > 0)


def _is_parameter(qty: str) -> bool:
    return not (qty.startswith("grad_output") or qty.startswith("grad_input"))


AS_TRAINED = " (as trained)"


def build_rows(judge, subject_pass, subject_model, routed, as_trained=None):
    """(rows in forward order, keys of the layers with a failing or nonfinite row). ``as_trained``:
    the judge of the subject's unhooked pass; a parameter gradient it saw differ from the hooked
    pass's gets a row of its own (quantity "weight (as trained)")."""
    capture = subject_pass.capture
    modules = dict(subject_model.named_modules())
    order = capture.order

    def kind_of(key):
        if key in capture.kinds:
            return capture.kinds[key]
        m = modules.get(module_name(key))
        return kind(m) if m is not None else "?"

    def rank(item):
        (key, qty), _ = item
        group = 0 if qty.startswith("grad_output") else 1 if qty.startswith("grad_input") else 2
        return (order.get(key, len(order)), group)

    results = list(judge.results.items())
    if as_trained is not None:
        results += [((key, qty + AS_TRAINED), res) for (key, qty), res in as_trained.results.items()
                    if judge.results.get((key, qty), {}).get("sha256") != res["sha256"]]
    rows, bad = [], []
    for (key, qty), res in sorted(results, key=rank):
        status = res["status"]
        is_param = _is_parameter(qty)
        pname = f"{key}.{qty.removesuffix(AS_TRAINED)}" if key else qty.removesuffix(AS_TRAINED)
        # `native`: native autograd computed this gradient on both sides (and they agree); a gradient
        # that any autograd.Function touched, or that disagrees, is judged
        if routed and is_param and status == compare.OK and pname not in (subject_pass.custom or ()):
            status = compare.NATIVE
        rows.append(Row(layer=key, kind=kind_of(key), quantity=qty, shape=res["shape"],
                        max_abs_err=res["max_abs_err"], rel_err=res["rel_err"], cosine=res["cosine"],
                        tolerance=res["tolerance"], status=status, native_rel_err=res["native_rel_err"],
                        norm=res["norm"], ref_norm=res["ref_norm"], sha256=res["sha256"],
                        tolerance_scale=res["tolerance_scale"] if res["tolerance_scale"] > 1 else None,
                        reproducible=(None if not judge.repeating else (key, qty) not in judge.unstable)))
        if status in (compare.FAIL, compare.NONFINITE) and key not in bad:
            bad.append(key)
    return rows, bad
