"""``torchbp demo | audit | compare | env``.

Exit codes: 0 the gradients agree, 1 they do not, 2 a usage or import error (one line, no traceback).
torch and the audit are imported only by the subcommand that needs them.
"""
from __future__ import annotations

import argparse
import sys

USAGE_ERROR, DISAGREE, AGREE = 2, 1, 0


class _Usage(Exception):
    """A usage / import error: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _Usage(message)


def _parser() -> argparse.ArgumentParser:
    from .checker.options import add_options
    p = _Parser(prog="torchbp", description="Hand-derived back-propagation (δ formulas) checked against "
                                            "native autograd, layer by layer.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("demo", help="the seed's network back-propagated three ways (torchbp demo --help)",
                   add_help=False)
    a = sub.add_parser("audit", help="audit a model's gradients, layer by layer")
    a.add_argument("target", metavar="MODULE:CALLABLE",
                   help="a callable returning a model, or (model, inputs[, target])")
    a.add_argument("--input-shape", metavar="4,10", help="shape of random inputs (when the callable returns a model)")
    a.add_argument("--target-shape", metavar="4,3", help="shape of a random target (default loss: ½‖y − h‖²)")
    a.add_argument("--progress", action="store_true", help="phase messages on stderr")
    add_options(a.add_argument)
    c = sub.add_parser("compare", help="compare two saved JSON reports layer by layer")
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--bitwise", action="store_true", help="gradients must be bitwise equal (SHA-256)")
    mode.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance on gradient norms (default 1e-6)")
    e = sub.add_parser("env", help="print the environment block an audit records")
    e.add_argument("--json", action="store_true", help="as JSON")
    e.add_argument("--device", help="device to describe (default: cuda if available, else cpu)")
    return p


def _shape(text: str | None, what: str):
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise _Usage(f"{what} must be comma-separated integers like 4,10, got {text!r}") from None


def _load(target: str):
    import importlib
    import os
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise _Usage(f"expected MODULE:CALLABLE, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:
        raise _Usage(f"cannot import {mod_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _Usage(f"{mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _Usage(f"{target} is not callable")
    return obj


def _audit(args) -> int:
    import torch

    from . import audit
    from .checker.options import audit_kwargs
    fn = _load(args.target)
    try:
        made = fn()
    except Exception as exc:
        raise _Usage(f"{args.target}() raised {type(exc).__name__}: {exc}") from None
    inputs = target = None
    if isinstance(made, tuple):
        if not 2 <= len(made) <= 3:
            raise _Usage(f"{args.target}() must return a model or (model, inputs[, target]), got a {len(made)}-tuple")
        model, inputs, *rest = made
        target = rest[0] if rest else None
    else:
        model = made
    if not isinstance(model, torch.nn.Module):
        raise _Usage(f"{args.target}() returned {type(model).__name__}, not a torch.nn.Module")
    kw = audit_kwargs(vars(args))
    g = torch.Generator().manual_seed(args.seed)
    if inputs is None:
        shape = _shape(args.input_shape, "--input-shape")
        if shape is None:
            raise _Usage(f"{args.target}() returned only a model: give --input-shape")
        inputs = torch.randn(shape, generator=g, dtype=kw.get("dtype", torch.float64))
    ts = _shape(args.target_shape, "--target-shape")
    if ts is not None:
        target = torch.randn(ts, generator=g, dtype=kw.get("dtype", torch.float64))
    try:
        report = audit(model, inputs, target, progress=args.progress or None, **kw)
    except Exception as exc:  # a model that cannot run on these inputs: a usage error
        raise _Usage(f"audit failed: {type(exc).__name__}: {exc}") from None
    print(report)
    if args.json:
        report.to_json(args.json)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(report.to_markdown() + "\n")
    return AGREE if report.ok else DISAGREE


def _compare(args) -> int:
    from tabulate import tabulate

    from .checker.report import AuditReport, compare_reports
    reports = []
    for path in (args.a, args.b):
        try:
            reports.append(AuditReport.from_json(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _Usage(f"cannot read report {path}: {exc}") from None
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
    import json

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
            return demo_main(argv[1:]) or 0
        args = _parser().parse_args(argv)
        return {"audit": _audit, "compare": _compare, "env": _env}[args.command](args)
    except _Usage as exc:
        print(f"torchbp: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
