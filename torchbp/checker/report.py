"""AuditReport: the verdict, the rows, and their renderings (text table, JSON, Markdown, plot)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

SCHEMA = 1
FOLD_ABOVE = 40  # rows; above this, passing rows fold into a count unless full=True
BAD = ("fail", "nonfinite")
SCALED = 10.0  # a tolerance widened at least this much for cancellation is marked ok*


@dataclass
class Row:
    """One compared quantity of one module call.

    ``rel_err``/``max_abs_err``/``cosine``: subject vs reference (float64) or vs the float64 oracle
    (lower precision, where ``native_rel_err`` is native autograd's own error against the oracle and
    ``tolerance`` = 2·native_rel_err + floor). ``norm``/``sha256``: the subject's gradient;
    ``ref_norm``: the reference's. ``reproducible``: with ``repeat=N``, whether N more backward
    passes gave bitwise the same gradient (None when not repeated). ``tolerance_scale``: set (> 1)
    when the gradient is smaller than the δ it was computed from (cancellation) and its tolerance
    was widened by that factor (shown as ``ok*`` from 10× on).
    """

    @property
    def scaled(self) -> bool:
        """Passed only thanks to a tolerance widened >= 10× for cancellation (shown ``ok*``)."""
        return bool(self.tolerance_scale and self.tolerance_scale >= SCALED and self.status not in BAD)

    @property
    def zero(self) -> bool:
        """Exactly zero on both sides (with elements): nothing was really compared."""
        return self.norm == 0 and self.ref_norm == 0 and math.prod(self.shape) > 0 \
            and self.status not in BAD


    layer: str
    kind: str
    quantity: str
    shape: tuple
    max_abs_err: float
    rel_err: float
    cosine: float
    tolerance: float
    status: str
    native_rel_err: float | None = None
    norm: float | None = None
    ref_norm: float | None = None
    sha256: str | None = None
    reproducible: bool | None = None
    tolerance_scale: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["shape"] = tuple(d.get("shape") or ())
        for k in ("max_abs_err", "rel_err", "cosine", "tolerance"):
            if d.get(k) is None:
                d[k] = float("nan")
        return cls(**d)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.2e}"
    return str(x)


@dataclass
class AuditReport:
    ok: bool
    rows: list
    first_divergence: str | None
    coverage: float
    environment: dict
    full: bool = field(default=False, repr=False, compare=False)

    # -- summaries -----------------------------------------------------------------------------------
    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.status in BAD]

    @property
    def worst(self) -> Row | None:
        """The compared row closest to (or furthest past) its tolerance: max rel_err / tolerance."""
        rows = [r for r in self.rows if r.status != "native" and not math.isnan(r.rel_err)
                and not math.isnan(r.tolerance)]
        return max(rows, key=lambda r: r.rel_err / r.tolerance if r.tolerance > 0 else math.inf, default=None)

    @property
    def worst_rel_err(self) -> float:
        w = self.worst
        return w.rel_err if w is not None else 0.0

    @property
    def not_reproducible(self) -> list:
        """Layers whose gradients changed between repeated backward passes (``repeat=N``)."""
        return sorted({r.layer for r in self.rows if r.reproducible is False})

    @property
    def zero_rows(self) -> list:
        """Rows whose gradient is exactly zero on both sides: not really checked."""
        return [r for r in self.rows if r.zero]

    @property
    def scaled_rows(self) -> list:
        """Passing rows whose tolerance was widened for cancellation (``ok*``)."""
        return [r for r in self.rows if r.scaled]

    def verdict(self) -> str:
        env = self.environment
        parts = [f"torchbp.audit: {'OK' if self.ok else 'FAIL'}"]
        if not self.ok:
            nonfinite = sum(r.status == "nonfinite" for r in self.rows)
            gap = env.get("forward_differs")
            if gap:
                parts.append(f"the passes' forward results differ (loss {gap['reference_loss']:.6e} native vs "
                             f"{gap['subject_loss']:.6e} subject): randomness the audit cannot share between passes "
                             "(a generator held outside the model) or a forward that differs; no layer is blamed")
            else:
                parts.append(f"first divergence: {self.first_divergence or '<root>'!r}"
                             if self.first_divergence is not None else "first divergence: not located")
            if nonfinite:
                parts.append(f"{nonfinite} nonfinite")
            if env.get("diverges_as_trained_only"):
                parts.append("only as trained: the run without hooks (fused runs, fast paths) disagrees, "
                             "the hooked per-layer run agrees")
        parts.append(f"coverage {self.coverage:.0%}")
        w = self.worst
        if w is not None:
            parts.append(f"worst rel err {w.rel_err:.2e} (tol {w.tolerance:.1e}, {w.layer or '<root>'} {w.quantity})")
        parts.append(f"{len(self.rows)} rows, {env.get('dtype')} on {env.get('device')}")
        zero = self.zero_rows
        if zero:
            names = [f"{r.layer or '<root>'} {r.quantity}" for r in zero]
            shown = ", ".join(names[:4]) + (f", … ({len(names) - 4} more)" if len(names) > 4 else "")
            parts.append(f"not checked: {len(zero)} of {len(self.rows)} gradients exactly zero on both sides ({shown})")
        if self.scaled_rows:
            parts.append(f"{len(self.scaled_rows)} ok* (tolerance scaled for cancellation)")
        if env.get("no_gradient_as_trained"):
            names = env["no_gradient_as_trained"]
            parts.append(f"as trained, no gradient reaches {len(names)} parameter(s), in native autograd either "
                         f"({', '.join(names[:4])}{', …' if len(names) > 4 else ''}): judged in the hooked run only")
        if env.get("float64_upgraded"):
            parts.append(f"float64 throughout (upgraded: {', '.join(env['float64_upgraded'])})")
        if env.get("tf32"):
            parts.append("TF32 on")
        if self.not_reproducible:
            parts.append(f"not bitwise reproducible: {', '.join(l or '<root>' for l in self.not_reproducible)}")
        return " | ".join(parts)

    LEGEND = ("ok*: passed with a tolerance scaled >= 10x for cancellation (the gradient is much smaller than "
              "the δ it was computed from, so its error is judged against that δ's norm); "
              "zero: exactly zero on both sides, nothing compared")

    # -- renderings ----------------------------------------------------------------------------------
    HEADERS = ("layer", "kind", "quantity", "shape", "max abs err", "rel err", "cosine", "tolerance", "status")

    def _table_rows(self, full: bool | None = None):
        full = self.full if full is None else full
        rows = self.rows
        if full or len(rows) <= FOLD_ABOVE:
            return rows, 0
        shown = [r for r in rows if r.status in BAD or r.layer == self.first_divergence
                 or r.reproducible is False]
        return shown, len(rows) - len(shown)

    def _cells(self, r: Row) -> list:
        status = "zero" if r.zero else r.status + ("*" if r.scaled else "")
        status += "" if r.reproducible is not False else " (not reproducible)"
        return [r.layer or "<root>", r.kind, r.quantity, "×".join(map(str, r.shape)) or "scalar",
                _fmt(r.max_abs_err), _fmt(r.rel_err), _fmt(r.cosine), _fmt(r.tolerance), status]

    def table(self, full: bool | None = None, fmt: str = "simple", rows=None) -> str:
        from tabulate import tabulate
        shown, folded = (rows, 0) if rows is not None else self._table_rows(full)
        text = tabulate([self._cells(r) for r in shown], headers=self.HEADERS, tablefmt=fmt,
                        disable_numparse=True) if shown else ""
        if any(r.zero or r.scaled for r in shown):
            text += "\n" + self.LEGEND
        if folded:
            text += f"\n({folded} passing rows folded; full=True or --full to show them)"
        return text

    def __str__(self) -> str:
        return self.verdict() + "\n" + self.table()

    def failure_message(self) -> str:
        """The verdict and only the failing rows: what assert_gradients_match raises."""
        return self.verdict() + "\n" + self.table(rows=self.failures)

    def to_markdown(self, full: bool | None = None) -> str:
        env = self.environment
        head = f"### {'✅' if self.ok else '❌'} {self.verdict()}\n\n"
        envline = ", ".join(f"{k}={env[k]}" for k in ("torch", "cuda", "device_name", "dtype", "seed")
                            if env.get(k) is not None)
        return head + self.table(full, fmt="github") + f"\n\n<sub>{envline}</sub>\n"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "ok": self.ok, "first_divergence": self.first_divergence,
                "coverage": self.coverage, "environment": self.environment,
                "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, path=None, indent: int = 1) -> str:
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path) -> "AuditReport":
        """From a JSON string, or a path to a file holding one."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as f:
                text = f.read()
        d = json.loads(text)
        if d.get("schema") != SCHEMA:
            raise ValueError(f"torchbp: unsupported audit report schema {d.get('schema')!r} (expected {SCHEMA})")
        return cls(ok=d["ok"], rows=[Row.from_dict(r) for r in d["rows"]],
                   first_divergence=d["first_divergence"], coverage=d["coverage"],
                   environment=d["environment"])

    def plot(self, path):
        """Relative error per layer (forward order) against its tolerance, log scale: how error grows
        as δ travels back through the network. Needs matplotlib (``pip install torchbp[plot]``)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("AuditReport.plot needs matplotlib: pip install 'torchbp[plot]'") from None
        rows = [r for r in self.rows if r.quantity.startswith("grad_input") or r.quantity.startswith("grad_output")]
        rows = [r for r in rows if r.quantity.startswith("grad_output")] or rows
        xs = range(len(rows))
        fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.35), 4))
        tiny = 1e-300
        ax.semilogy(xs, [max(r.rel_err, tiny) if not math.isnan(r.rel_err) else float("nan") for r in rows],
                    "o-", label="rel err (δ arriving at the layer)")
        ax.semilogy(xs, [r.tolerance for r in rows], "--", label="tolerance")
        ax.set_xticks(list(xs), [r.layer or "<root>" for r in rows], rotation=90, fontsize=7)
        ax.set_xlabel("layer (forward order; back-propagation runs right to left)")
        ax.set_ylabel("relative error")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def compare_reports(a: AuditReport, b: AuditReport, *, bitwise: bool = False, rtol: float = 1e-6) -> list:
    """Rows of two saved audits that differ, matched by (layer, quantity): with ``bitwise`` their
    SHA-256 digests, otherwise the subject gradient norms within ``rtol``; also rows present in one
    report only and status changes. Returns [(layer, quantity, what differs)]; empty when they agree."""
    ia = {(r.layer, r.quantity): r for r in a.rows}
    ib = {(r.layer, r.quantity): r for r in b.rows}
    diffs = []
    for key in list(ia) + [k for k in ib if k not in ia]:
        ra, rb = ia.get(key), ib.get(key)
        if ra is None or rb is None:
            diffs.append((*key, "only in " + ("B" if ra is None else "A")))
        elif tuple(ra.shape) != tuple(rb.shape):
            diffs.append((*key, f"shape {list(ra.shape)} vs {list(rb.shape)}"))
        elif bitwise:
            if ra.sha256 != rb.sha256:
                diffs.append((*key, f"sha256 {str(ra.sha256)[:12]} vs {str(rb.sha256)[:12]}; "
                                    f"norm {_fmt(ra.norm)} vs {_fmt(rb.norm)}"))
        else:
            na, nb = ra.norm, rb.norm
            if na is None or nb is None or not math.isfinite(na) or not math.isfinite(nb):
                if na != nb:
                    diffs.append((*key, f"norm {_fmt(na)} vs {_fmt(nb)}"))
            elif abs(na - nb) > rtol * max(abs(na), abs(nb)):
                diffs.append((*key, f"norm {na:.9e} vs {nb:.9e} (rel diff {abs(na - nb) / max(abs(na), abs(nb)):.2e} > rtol {rtol:g})"))
        if ra is not None and rb is not None and ra.status != rb.status:
            diffs.append((*key, f"status {ra.status} vs {rb.status}"))
    return diffs
