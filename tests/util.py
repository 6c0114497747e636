"""Shared test helpers: compare a δ callable with its native counterpart, as docs/design.md prescribes."""
from __future__ import annotations

import pytest
import torch

import torchbp

CUDA = torch.cuda.is_available()
# every test that takes `device` runs on the CPU and, where a GPU exists, on CUDA (skipped cleanly otherwise)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not CUDA, reason="no CUDA device")])]
LOW = [torch.float32, torch.bfloat16, torch.float16]
# the floor(dtype) of the comparison policy (what a correct low-precision result may still be off by):
# one table, in torchbp/checker/compare.py
from torchbp.checker.compare import FLOOR  # noqa: E402


def rel_err(s: torch.Tensor, r: torch.Tensor) -> float:
    s, r = s.detach().double().cpu(), r.detach().double().cpu()
    return float((s - r).norm() / r.norm().clamp_min(1e-300)) if r.norm() > 0 else float((s - r).norm())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _convert(obj, dtype, device):
    """Fresh leaves: floating tensors to `dtype` (integer ones keep theirs), all on `device`."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to(device=device, dtype=dtype if obj.is_floating_point() else obj.dtype)
        return t.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(o, dtype, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _convert(v, dtype, device) for k, v in obj.items()}
    return obj


def run(fn, args, kwargs=None, seed=0):
    """Output and the gradients of every requires_grad input for the cost <v, fn(*args)>."""
    kwargs = kwargs or {}
    out = fn(*args, **kwargs)
    leaves = [t for t in _tensors((args, kwargs)) if t.requires_grad]
    outs = [o for o in _tensors(out) if o.is_floating_point() and o.requires_grad]
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    grads = torch.autograd.grad(outs, leaves, vs, allow_unused=True)
    return out, [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, grads)]


def _under_autocast(fn, device, dtype):
    """``fn`` with its forward run under ``torch.autocast(device, dtype)`` (the backward runs outside, as in
    training)."""
    def call(*args, **kwargs):
        with torch.autocast(device, dtype=dtype):
            return fn(*args, **kwargs)
    return call


def assert_matches_native(ours, native, args, kwargs=None, *, dtype=torch.float64, device="cpu", autocast=None):
    """float64: rel err <= 1e-10 for the output and every gradient.  Lower precision: against a
    float64 oracle, err(ours) <= 2 * err(native same dtype) + floor(dtype).  ``autocast`` (a dtype): both
    forwards run under ``torch.autocast`` on float32 inputs, must give native's dtypes, and are held to the
    low-precision rule with that dtype's floor."""
    kwargs = kwargs or {}
    oracle = native
    if autocast is not None:
        dtype = torch.float32
        ours, native = _under_autocast(ours, device, autocast), _under_autocast(native, device, autocast)
    a_args, a_kw = _convert(args, dtype, device), _convert(kwargs, dtype, device)
    n_args, n_kw = _convert(args, dtype, device), _convert(kwargs, dtype, device)
    out_s, g_s = run(ours, a_args, a_kw)
    out_n, g_n = run(native, n_args, n_kw)
    pairs = list(zip(_tensors(out_s) + g_s, _tensors(out_n) + g_n))
    assert len(_tensors(out_s)) == len(_tensors(out_n))
    if dtype == torch.float64:
        for i, (s, n) in enumerate(pairs):
            assert s.shape == n.shape and s.dtype == n.dtype, (i, s.shape, n.shape, s.dtype, n.dtype)
            assert rel_err(s, n) <= 1e-10, f"item {i}: rel err {rel_err(s, n):.3e}"
        return
    o_args, o_kw = _convert(args, torch.float64, "cpu"), _convert(kwargs, torch.float64, "cpu")
    out_o, g_o = run(oracle, o_args, o_kw)
    floor = FLOOR[autocast if autocast is not None else dtype]
    for i, ((s, n), o) in enumerate(zip(pairs, _tensors(out_o) + g_o)):
        assert s.shape == n.shape and s.dtype == n.dtype, (i, s.shape, n.shape, s.dtype, n.dtype)
        es, en = rel_err(s, o), rel_err(n, o)
        assert es <= 2 * en + floor, f"item {i}: err {es:.3e} vs native {en:.3e} ({autocast or dtype})"


def gradchecks(fn, args, kwargs=None):
    """gradcheck and gradgradcheck in float64 over the floating, requires_grad arguments."""
    kwargs = kwargs or {}
    args = _convert(args, torch.float64, "cpu")
    kwargs = _convert(kwargs, torch.float64, "cpu")
    f = (lambda *a: fn(*a, **kwargs)) if kwargs else fn
    assert torch.autograd.gradcheck(f, args, check_undefined_grad=False)
    assert torch.autograd.gradgradcheck(f, args, check_undefined_grad=False)


def grad_fn_names(t: torch.Tensor) -> list[str]:
    """Class names of every autograd node reachable from ``t``'s grad_fn."""
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.append(type(f).__name__)
        stack.extend(n for n, _ in f.next_functions)
    return names


def delta_params(model, out):
    """Names of the parameters whose AccumulateGrad is fed by a δ Function (directly or through views)."""
    names = {id(p): n for n, p in model.named_parameters()}
    found, seen, stack = set(), set(), [(out.grad_fn, False)]
    while stack:
        node, via_delta = stack.pop()
        if node is None or (node, via_delta) in seen:
            continue
        seen.add((node, via_delta))
        here = torchbp.registry.is_delta_function(getattr(type(node), "_forward_cls", None))
        if hasattr(node, "variable") and via_delta:
            found.add(names.get(id(node.variable)))
        # views, splits and concatenations of a parameter (chunk, view, expand, cat for bias_k) route δ unchanged
        routing = ("Split", "View", "Expand", "Unsafe", "Cat", "Permute", "Transpose")
        passes = here or (via_delta and type(node).__name__.startswith(routing))
        stack.extend((n, passes) for n, _ in node.next_functions)
    return found - {None}


def module_fn(module):
    """module(x) as a function of (x, *parameters), so the helpers see and compare the parameters' grads;
    returns that function and the parameters."""
    names = [n for n, _ in module.named_parameters()]
    return (lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps)), (x,))), \
        list(module.parameters())


def twin_pair(cls, kw, dtype=torch.float64):
    """(native, δ twin) of ``cls(**kw)``, the twin holding the native's parameters (seeded: the same each call)."""
    torch.manual_seed(0)
    native = cls(**kw).to(dtype)
    twin = torchbp.swap(cls(**kw).to(dtype))
    twin.load_state_dict(native.state_dict())
    return native, twin


def is_delta(t: torch.Tensor) -> bool:
    """Whether ``t`` came out of a δ Function (through the squeeze that drops an unbatched input's batch dim)."""
    fn = t.grad_fn
    if type(fn).__name__.startswith("SqueezeBackward"):  # an unbatched input's batch dim, added and dropped
        fn = fn.next_functions[0][0]
    return fn is not None and issubclass(getattr(type(fn), "_forward_cls", type), torchbp.functional.DeltaFunction)


class RecordOps:
    """A dispatch mode recording the name of every aten op that runs inside it (``with RecordOps() as ops:``,
    then ``ops.names``)."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Record(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.names = []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.names.append(func.__name__)
                return func(*args, **(kwargs or {}))

        return _Record()
