"""``torchbp demo | audit | compare | env``.

Exit codes, for scripts and CI:

  0  the gradients agree (``audit``, ``demo``), the reports agree (``compare``), done (``env``)
  1  they do not agree
  2  a usage error, reported on stderr without a traceback: a bad flag or value, an output path that
     cannot be written, a report file that cannot be read, a model module that cannot be imported, a
     model callable that raises or exits, a model that cannot run on the given inputs, a model torchbp
     refuses with a message naming why (``torchbp.audit: ...``, ``torchbp.functional.<op>: ...``)
  3  an internal error of torchbp: its traceback on stderr

torch and the audit are imported only by the subcommand that needs them. Output paths, devices and
shapes are checked before the model is built, so a finished audit is never lost to a bad path.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback

AGREE, DISAGREE, USAGE_ERROR, INTERNAL_ERROR = 0, 1, 2, 3

# the shared audit options (torchbp/checker/options.py) where the CLI describes them its own way
HELP = {"markdown": "write the report as Markdown to PATH (replacing the file; --markdown-append appends)"}


class _Usage(Exception):
    """A usage error: exit code 2, the message (and the command's usage line, for a bad command line)."""

    def __init__(self, message: str, usage: str | None = None):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _Usage(message, usage=self.format_usage())


def _parser() -> argparse.ArgumentParser:
    from .checker.options import add_options
    p = _Parser(prog="torchbp", description="Hand-derived back-propagation (δ formulas) checked against "
                                            "native autograd, layer by layer. Exit codes: 0 agree, 1 disagree, "
                                            "2 usage error, 3 internal error.")
    sub = p.add_subparsers(dest="command", metavar="{demo,audit,compare,env}", required=True,
                           parser_class=_Parser)
    sub.add_parser("demo", help="the derivation's five-layer network back-propagated three ways "
                                "(torchbp demo --help)", add_help=False)
    a = sub.add_parser(
        "audit", help="audit a model's gradients, layer by layer",
        usage="torchbp audit MODULE:CALLABLE [--input-shape 4,10] [--target-shape 4,3] [options]",
        description="Build the model with MODULE:CALLABLE (torch.manual_seed(--seed) first, so two runs "
                    "build the same weights), run it with δ layers and with native autograd, and compare "
                    "every layer. Exit codes: 0 agree, 1 disagree, 2 usage error, 3 internal error.")
    a.add_argument("target", metavar="MODULE:CALLABLE",
                   help="a callable returning a model, or (model, inputs[, target])")
    a.add_argument("--input-shape", metavar="4,10", help="shape of random inputs (when the callable returns a model)")
    a.add_argument("--target-shape", metavar="4,3", help="shape of a random target (default loss: ½‖y − h‖²)")
    a.add_argument("--progress", action="store_true", help="phase messages on stderr")

    def add(flag, **kw):
        kw["help"] = HELP.get(kw["dest"], kw["help"])
        a.add_argument(flag, **kw)

    add_options(add)
    a.add_argument("--markdown-append", metavar="PATH",
                   help="append the report as Markdown to PATH (a CI job summary such as $GITHUB_STEP_SUMMARY)")
    c = sub.add_parser(
        "compare", usage="torchbp compare A.json B.json [--bitwise | --rtol RTOL]",
        help="compare two saved JSON reports layer by layer",
        description="Compare two reports written by `torchbp audit --json` (two machines, two torch "
                    "versions, two runs), row by row: the subject's gradient norms within --rtol, or their "
                    "SHA-256 digests with --bitwise. Exit codes: 0 the same, 1 they differ, 2 usage error.")
    c.add_argument("a", metavar="A.json", help="the first report (torchbp audit --json A.json)")
    c.add_argument("b", metavar="B.json", help="the second report")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--bitwise", action="store_true", help="gradients must be bitwise equal (SHA-256)")
    mode.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance on gradient norms (default 1e-6)")
    e = sub.add_parser("env", usage="torchbp env [--json] [--device DEVICE]",
                       help="print the environment block an audit records")
    e.add_argument("--json", action="store_true", help="as JSON")
    e.add_argument("--device", help="device to describe (default: cuda if available, else cpu)")
    p.commands = {"audit": a, "compare": c, "env": e}
    return p


# ---- checks made before anything runs ----------------------------------------------------------

def _shape(text: str | None, what: str):
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise _Usage(f"{what} must be comma-separated integers like 4,10, got {text!r}") from None
    if any(n < 0 for n in shape):
        raise _Usage(f"{what} {text!r}: sizes cannot be negative")
    return shape


def _output(path: str | None, flag: str) -> None:
    """An output path must name a writable file in an existing directory."""
    if path is None:
        return
    if not path:
        raise _Usage(f"{flag}: the path is empty")
    if os.path.isdir(path):
        raise _Usage(f"{flag} {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise _Usage(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise _Usage(f"{flag} {path}: not writable")


def _device(text: str | None, flag: str) -> None:
    """A device torch knows, and one this machine has."""
    if text is None:
        return
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise _Usage(f"{flag} {text!r} is not a device ({str(exc).splitlines()[0]})") from None
    if dev.type == "cpu":
        return
    mod = getattr(torch, dev.type, None)
    if mod is None or not hasattr(mod, "is_available") or not mod.is_available():
        raise _Usage(f"{flag} {text}: no {dev.type.upper()} device on this machine")
    if dev.index is not None and hasattr(mod, "device_count") and dev.index >= mod.device_count():
        raise _Usage(f"{flag} {text}: this machine has {mod.device_count()} {dev.type} device(s)")


def _random(shape, generator, dtype, what: str):
    """Random normal inputs of ``shape``; a shape this machine cannot hold is a usage error."""
    import torch
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = None
    if memory is not None and nbytes > memory:
        raise _Usage(f"{what} {','.join(map(str, shape))}: {nbytes / 2**30:.3g} GiB of {dtype} is more "
                     f"than this machine's memory ({memory / 2**30:.3g} GiB)")
    try:
        return torch.randn(shape, generator=generator, dtype=dtype)
    except (RuntimeError, MemoryError, ValueError, OverflowError) as exc:
        raise _Usage(f"{what} {','.join(map(str, shape))}: cannot allocate ({str(exc).splitlines()[0]})") from None


# ---- the user's code ---------------------------------------------------------------------------

def _exited(what: str, exc: SystemExit) -> _Usage:
    return _Usage(f"{what} called sys.exit({exc.code!r})")


def _load(target: str):
    import importlib
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise _Usage(f"expected MODULE:CALLABLE, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except SystemExit as exc:
        raise _exited(f"importing {mod_name!r}", exc) from None
    except Exception as exc:
        raise _Usage(f"cannot import {mod_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _Usage(f"{mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _Usage(f"{target} is not callable")
    return obj


def _make(fn, target: str, seed: int):
    """Call the model callable with torch's generator seeded, so two runs build the same weights."""
    import torch
    torch.manual_seed(seed)
    try:
        made = fn()
    except SystemExit as exc:
        raise _exited(f"{target}()", exc) from None
    except Exception as exc:
        raise _Usage(f"{target}() raised {type(exc).__name__}: {exc}") from None
    inputs = target_ = None
    if isinstance(made, tuple):
        if not 2 <= len(made) <= 3:
            raise _Usage(f"{target}() must return a model or (model, inputs[, target]), got a {len(made)}-tuple")
        model, inputs, *rest = made
        target_ = rest[0] if rest else None
    else:
        model = made
    if not isinstance(model, torch.nn.Module):
        raise _Usage(f"{target}() returned {type(model).__name__}, not a torch.nn.Module")
    return model, inputs, target_


def _native_problem(model, inputs, target, kw) -> str | None:
    """Why ``model`` cannot run natively on ``inputs`` (forward, the audit's default loss, backward) in
    the audit's dtype and device: the error's first line, or None when it runs. Run on a copy when the
    audit itself raised, to tell a model that cannot run (a usage error) from a failure of torchbp."""
    import copy

    import torch

    from .checker.losses import InnerProduct, half_squared_error
    dtype, device = kw.get("dtype", torch.float64), kw.get("device")

    def conv(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.to(device) if device is not None else t
        return t.to(dtype) if t.is_floating_point() else t

    try:
        with torch.random.fork_rng(devices=[]):
            m = copy.deepcopy(model).to(dtype=dtype)
            m = m.to(device) if device is not None else m
            if isinstance(inputs, tuple):
                out = m(*map(conv, inputs))
            elif isinstance(inputs, dict):
                out = m(**{k: conv(v) for k, v in inputs.items()})
            else:
                out = m(conv(inputs))
            loss = InnerProduct(kw.get("seed", 0), dtype)(out) if target is None else \
                half_squared_error(out, conv(target))
            loss.backward()
    except SystemExit as exc:
        return f"it called sys.exit({exc.code!r})"
    except Exception as exc:
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return None


# ---- the subcommands ---------------------------------------------------------------------------

def _audit(args) -> int:
    outputs = (("--json", args.json), ("--markdown", args.markdown), ("--markdown-append", args.markdown_append))
    for flag, path in outputs:
        _output(path, flag)
    if args.repeat < 0:
        raise _Usage(f"--repeat must be 0 or more, got {args.repeat}")
    in_shape, target_shape = _shape(args.input_shape, "--input-shape"), _shape(args.target_shape, "--target-shape")
    _device(args.device, "--device")
    _device(args.oracle_device, "--oracle-device")
    import torch

    from . import audit
    from .checker.options import audit_kwargs
    kw = audit_kwargs(vars(args))
    kw.setdefault("dtype", torch.float64)
    model, inputs, target = _make(_load(args.target), args.target, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    if inputs is None:
        if in_shape is None:
            raise _Usage(f"{args.target}() returned only a model: give --input-shape")
        inputs = _random(in_shape, g, kw["dtype"], "--input-shape")
    if target_shape is not None:
        target = _random(target_shape, g, kw["dtype"], "--target-shape")
    try:
        report = audit(model, inputs, target, progress=args.progress or None, **kw)
    except SystemExit as exc:
        raise _exited("the model", exc) from None
    except Exception as exc:
        problem = _native_problem(model, inputs, target, kw)
        if problem is not None:  # native autograd fails too: the model cannot run on these inputs
            raise _Usage(f"the model cannot run on these inputs under native autograd ({problem})") from None
        if str(exc).startswith("torchbp."):  # torchbp's own refusal of this model, naming the problem
            raise _Usage(str(exc)) from None
        raise  # native runs, the audit does not, and no refusal says why: torchbp's own failure
    print(report)
    try:
        if args.json:
            report.to_json(args.json)
        for path, mode in ((args.markdown, "w"), (args.markdown_append, "a")):
            if path:
                with open(path, mode, encoding="utf-8") as f:
                    f.write(report.to_markdown() + "\n")
    except OSError as exc:
        raise _Usage(f"cannot write the report: {exc}") from None
    return AGREE if report.ok else DISAGREE


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _report_problem(doc, schema) -> str | None:
    """What makes a parsed JSON document something other than an audit report, or None."""
    if not isinstance(doc, dict):
        return f"its top level is {type(doc).__name__ if doc is not None else 'null'}, not an object"
    if doc.get("schema") != schema:
        hint = " (a pytest --torchbp-report file; compare the reports inside it)" \
            if str(doc.get("schema", "")).startswith("torchbp-pytest") else ""
        return f"schema {doc.get('schema')!r}, expected {schema}{hint}"
    fields = {"ok": lambda v: isinstance(v, bool), "rows": lambda v: isinstance(v, list),
              "environment": lambda v: isinstance(v, dict),
              "first_divergence": lambda v: v is None or isinstance(v, str),
              "coverage": lambda v: v is None or _number(v)}
    for name, good in fields.items():
        if name not in doc or not good(doc[name]):
            return f"field {name!r} is missing or of the wrong type"
    row_fields = {**{k: lambda v: isinstance(v, str) for k in ("layer", "kind", "quantity", "status")},
                  "shape": lambda v: v is None or (isinstance(v, list) and all(isinstance(n, int) for n in v)),
                  **{k: lambda v: v is None or _number(v) for k in ("max_abs_err", "rel_err", "cosine", "tolerance",
                                                                   "native_rel_err", "norm", "ref_norm")},
                  "sha256": lambda v: v is None or isinstance(v, str),
                  "reproducible": lambda v: v is None or isinstance(v, bool)}
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict):
            return f"row {i} is not an object"
        for name, good in row_fields.items():
            required = name in ("layer", "kind", "quantity", "status")
            if (required and name not in row) or (name in row and not good(row[name])):
                return f"row {i}: field {name!r} is missing or of the wrong type"
    return None


def _read_report(path: str):
    from .checker.report import SCHEMA, AuditReport
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Usage(f"cannot read report {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _Usage(f"cannot read report {path}: not JSON ({exc})") from None
    problem = _report_problem(doc, SCHEMA)
    if problem is not None:
        raise _Usage(f"{path} is not a torchbp audit report: {problem}")
    return AuditReport.from_json(text)


def _compare(args) -> int:
    if not (math.isfinite(args.rtol) and args.rtol >= 0):
        raise _Usage(f"--rtol must be a finite number ≥ 0, got {args.rtol}")
    reports = [_read_report(path) for path in (args.a, args.b)]
    from tabulate import tabulate

    from .checker.report import compare_reports
    diffs = compare_reports(*reports, bitwise=args.bitwise, rtol=args.rtol)
    how = "bitwise" if args.bitwise else f"rtol {args.rtol:g}"
    ea, eb = reports[0].environment, reports[1].environment
    envdiff = [k for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)]
    if not diffs:
        print(f"torchbp compare: same ({how}), {len(reports[0].rows)} rows")
        return AGREE
    print(f"torchbp compare: {len(diffs)} difference(s) ({how})")
    print(tabulate([(l or "<root>", q, w) for l, q, w in diffs], headers=("layer", "quantity", "A vs B")))
    if envdiff:
        print("environment differs in: " + ", ".join(f"{k} ({ea.get(k)} vs {eb.get(k)})" for k in envdiff))
    return DISAGREE


def _env(args) -> int:
    _device(args.device, "--device")
    import torch

    from .checker import environment
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device=dev)
    if args.json:
        print(json.dumps(env, indent=1))
    else:
        width = max(map(len, env))
        for k, v in env.items():
            print(f"{k:<{width}}  {v}")
    return AGREE


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "demo":
            try:
                from .demo import main as demo_main
            except ImportError as exc:
                raise _Usage(f"the demo is not available: {exc}") from None
            return demo_main(argv[1:]) or AGREE
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported with the subcommand's usage line, not the top level's
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        return {"audit": _audit, "compare": _compare, "env": _env}[args.command](args)
    except _Usage as exc:
        if exc.usage:
            print(exc.usage.rstrip(), file=sys.stderr)
        print(f"torchbp: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exc:  # argparse's --help (0) and the demo's usage errors (2)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or AGREE
        print(f"torchbp: internal error: exit({exc.code!r})", file=sys.stderr)
        return INTERNAL_ERROR
    except Exception:
        traceback.print_exc()
        print(f"torchbp: internal error (exit code {INTERNAL_ERROR}): the traceback above is a failure of "
              "torchbp itself, not of your model or command line; please report it", file=sys.stderr)
        return INTERNAL_ERROR
