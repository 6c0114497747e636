"""The common matrix: every case of every family table (tests/cases/) through the checks it takes, once.

float64 against native autograd (rel 1e-10, output and every gradient) on every device; gradcheck and
gradgradcheck in float64; float32 / bfloat16 / float16 under the low-precision oracle rule
(err(δ) <= 2·err(native) + floor(dtype), helpers in tests/util.py); the same rule under torch.autocast
(bfloat16 on the CPU, float16 on CUDA) with native's dtypes; per-example gradients under torch.func.vmap;
native's own call routed through ``torchbp.manual_backward()``; and every table's bad inputs refused with an
error that names the op."""
import contextlib
import warnings

import pytest
import torch

import torchbp
from cases import AUTOCAST, FLOAT64, GRADCHECK, LOW, ROUTE, VMAP, all_bad, all_cases
from util import DEVICES, _convert, _tensors, assert_matches_native, gradchecks, rel_err

CASES = all_cases()
BAD = all_bad()
AUTOCAST_DTYPE = {"cpu": torch.bfloat16, "cuda": torch.float16}  # what each device's autocast defaults to


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


def _float64(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("case,device", _params(FLOAT64))
def test_float64(case, device):
    args, kw = case.make()
    with _quiet(case):
        assert_matches_native(case.ours, case.native, args, kw, device=device)
    if case.delta_ran:
        args, kw = case.make()
        with _quiet(case):
            out = case.ours(*_float64(args), **kw)
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


@pytest.mark.parametrize("case,device", _params(AUTOCAST))
def test_autocast(case, device):
    args, kw = case.make()
    with _quiet(case):
        assert_matches_native(case.ours, case.native, args, kw, device=device, autocast=AUTOCAST_DTYPE[device])


def _per_example_grads(fn, args, kw, in_dims):
    """vmap(grad(Σ (w ⊙ fn(...))²)) over ``in_dims``, for every floating argument that requires grad."""
    wrt = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad)
    leaves = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]

    def cost(*a):  # weighted: a plain Σ o² is constant (gradient 0) for norm-preserving ops such as normalize
        return sum((o * torch.linspace(1, 2, o.numel(), dtype=o.dtype).view(o.shape)).square().sum()
                   for o in _tensors(fn(*a, **kw)) if o.is_floating_point())

    return torch.func.vmap(torch.func.grad(cost, argnums=wrt), in_dims=in_dims)(*leaves)


@pytest.mark.parametrize("case", _params(VMAP, on_devices=False))
def test_vmap(case):
    args, kw = case.make()
    args, kw = _convert(tuple(_float64(args)), torch.float64, "cpu"), _convert(kw, torch.float64, "cpu")
    in_dims = tuple(case.vmap_dims or (0,))
    in_dims += (None,) * (len(args) - len(in_dims))  # the arguments not named: shared by every example
    with _quiet(case):
        ours = _per_example_grads(case.ours, args, kw, in_dims)
        native = _per_example_grads(case.native, args, kw, in_dims)
    for i, (s, n) in enumerate(zip(ours, native)):
        assert s.shape == n.shape and rel_err(s, n) <= 1e-10, f"argument {i}: rel err {rel_err(s, n):.3e}"


@pytest.mark.parametrize("case,device", _params(ROUTE))
def test_route(case, device):
    def routed(*a, **k):
        with torchbp.manual_backward():
            return case.native(*a, **k)

    args, kw = case.make()
    with _quiet(case):
        assert_matches_native(routed, case.native, args, kw, device=device)
        args, kw = case.make()
        out = routed(*_convert(tuple(_float64(args)), torch.float64, device), **_convert(kw, torch.float64, device))
    assert _delta_nodes(out), f"{case.id}: native's call was not routed to a δ Function"


@pytest.mark.parametrize("bad", [pytest.param(b, id=b.id) for b in BAD])
def test_bad_input(bad):
    args, kw = bad.make()
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError), match=bad.match):
        bad.ours(*args, **kw)
    if bad.native is not None:
        args, kw = bad.make()
        with pytest.raises(Exception):
            bad.native(*args, **kw)
