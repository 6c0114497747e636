"""The common matrix: every case of every family table (tests/cases/) through the checks it takes, once.

float64 against native autograd (rel 1e-10, output and every gradient) on every device; gradcheck and
gradgradcheck in float64; float32 / bfloat16 / float16 under the low-precision oracle rule
(err(δ) <= 2·err(native) + floor(dtype), helpers in tests/util.py)."""
import contextlib
import warnings

import pytest
import torch

import torchbp
from cases import FLOAT64, GRADCHECK, LOW, all_cases
from util import DEVICES, assert_matches_native, gradchecks

CASES = all_cases()


def _devices(case):
    """(name, marks) of the devices the case runs on (CUDA skipped cleanly without a GPU)."""
    for d in DEVICES:
        name, marks = (d.values[0], d.marks) if hasattr(d, "values") else (d, ())
        if name in case.devices:
            yield name, marks


def _params(check, with_dtype=False, on_devices=True):
    """One pytest.param per case taking ``check`` (per device, and per low-precision dtype with_dtype)."""
    out = []
    for case in (c for c in CASES if check in c.checks):
        if not on_devices:
            out.append(pytest.param(case, id=case.id))
            continue
        for dev, marks in _devices(case):
            for dtype in (case.low_dtypes if with_dtype else (None,)):
                values = (case, dev) if dtype is None else (case, dtype, dev)
                tag = case.id + "-" + dev + ("" if dtype is None else "-" + str(dtype).removeprefix("torch."))
                out.append(pytest.param(*values, id=tag, marks=marks))
    return out


@contextlib.contextmanager
def _quiet(case):
    """The warnings both sides raise alike (as torch does) silenced where the case says so."""
    with warnings.catch_warnings():
        if case.quiet:
            warnings.simplefilter("ignore")
        yield


def _delta_nodes(out):
    """The δ Functions among the autograd nodes reachable from ``out``."""
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
    seen, stack, found = set(), [o.grad_fn for o in outs], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if torchbp.registry.is_delta_function(getattr(type(f), "_forward_cls", None)):
            found.append(type(f)._forward_cls.__name__)
        stack.extend(n for n, _ in f.next_functions)
    return found


@pytest.mark.parametrize("case,device", _params(FLOAT64))
def test_float64(case, device):
    args, kw = case.make()
    with _quiet(case):
        assert_matches_native(case.ours, case.native, args, kw, device=device)
    if case.delta_ran:
        args, kw = case.make()
        out = case.ours(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                          for a in args], **kw)
        assert _delta_nodes(out), f"{case.id}: no δ Function in the graph (a native fallback)"


@pytest.mark.parametrize("case", _params(GRADCHECK, on_devices=False))
def test_gradcheck(case):
    args, kw = case.make()
    gradchecks(case.ours, args, kw)


@pytest.mark.parametrize("case,dtype,device", _params(LOW, with_dtype=True))
def test_low_precision(case, dtype, device):
    args, kw = case.make()
    with _quiet(case):
        assert_matches_native(case.ours, case.native, args, kw, dtype=dtype, device=device)
