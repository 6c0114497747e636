"""The rule every δ backward keeps, checked by running it: a δ Function's backward computes its formula with
plain torch ops. It never calls a native backward kernel (``aten.*_backward``, ``convolution_backward``:
what ``torch.nn.grad.*`` runs too) and never runs native autograd inside (``torch.autograd.grad``,
``Tensor.backward``, ``torch.func``).

A dispatch mode records every aten op that runs while the autograd engine is inside a δ Function's node
(``torch._C._current_autograd_node``), over PyTorch's own OpInfo samples for every routed op, module_db's
inputs for every twin, and a fused dense run. Native nodes (structure ops such as slicing, whose backward is
``aten.slice_backward``) are not δ code and are not held to the rule.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchbp
from torchbp import registry
from util import _tensors

pytest.importorskip("expecttest")  # torch's testing internals import it

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

_current_node = getattr(torch._C, "_current_autograd_node", None)
pytestmark = pytest.mark.skipif(_current_node is None, reason="this torch cannot name the running autograd node")

N_SAMPLES = 4  # OpInfo samples per op (the first ones: the rule is about code paths, not values)
N_MODULE = 3
# Routed ops whose samples reach no δ node's backward, with the reason (every other op must reach one, so the
# check is not vacuous).
NO_DELTA_BACKWARD = {
    "div.trunc_rounding": "rounding division: its gradient is zero, computed by no backward",
    "div.floor_rounding": "rounding division: its gradient is zero, computed by no backward",
    "norm.nuc": "the nuclear norm is not a vector norm: left native",
}


def _is_delta_node(node) -> bool:
    return node is not None and registry.is_delta_function(getattr(type(node), "_forward_cls", None))


def _forbidden(name: str) -> bool:
    """A native backward kernel: aten's ``*_backward`` ops (convolution_backward, native_batch_norm_backward,
    max_pool2d_with_indices_backward, ...) and the ``_backward_data`` / ``_backward_input`` variants."""
    return "_backward" in name


class _Recorder(TorchDispatchMode):
    """Which aten ops ran inside which δ node; and whether native autograd was entered from one."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, set[str]] = {}
        self.nested: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        node = _current_node()
        if _is_delta_node(node):
            self.ops.setdefault(type(node).__name__, set()).add(func.name())
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def watching_autograd(self):
        """Record a call of native autograd's entry points made while a δ node runs."""
        patched = [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward")]
        func = getattr(torch, "func", None)
        patched += [(func, n) for n in ("vjp", "grad", "jacrev", "jacfwd", "vmap") if func is not None]
        saved = [(owner, name, getattr(owner, name)) for owner, name in patched]

        def wrap(name, original):
            def call(*args, **kwargs):
                node = _current_node()
                if _is_delta_node(node):
                    self.nested.append(f"{type(node).__name__} called {name}")
                return original(*args, **kwargs)
            return call

        for owner, name, original in saved:
            setattr(owner, name, wrap(name, original))
        try:
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def violations(self) -> list[str]:
        bad = [f"{node} ran {op}" for node, ops in sorted(self.ops.items()) for op in sorted(ops) if _forbidden(op)]
        return bad + self.nested


def _backward(outputs, leaves, rec):
    diff = [o for o in _tensors(outputs) if o.requires_grad and o.is_floating_point()]
    if not diff or not leaves:
        return
    g = torch.Generator().manual_seed(1)
    vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in diff]
    with rec.watching_autograd(), rec:
        torch.autograd.grad(diff, leaves, vs, allow_unused=True)


def _fresh(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fresh(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _fresh(v) for k, v in obj.items()}
    return obj


def _routed(o):
    cands = [o.op, o.method_variant, o.inplace_variant, getattr(torch.Tensor, o.name, None)]
    return any(c is not None and registry.function_for(c) is not None for c in cands)


def _name(o):
    return o.name + (f".{o.variant_test_name}" if o.variant_test_name else "")


OPS = [pytest.param(o, id=_name(o)) for o in op_db if o.supports_autograd and _routed(o)]
TWINS = [pytest.param(m, id=m.module_cls.__name__) for m in module_db if registry.twin_for(m.module_cls) is not None]


def test_the_recorder_sees_a_backward_kernel_called_from_a_delta_node():
    """The check itself: a δ Function that calls a native backward kernel, or native autograd, is caught."""

    class Cheat(torchbp.functional.DeltaFunction):
        @staticmethod
        def forward(x, w):
            return torch.nn.functional.conv2d(x, w)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, delta):
            x, w = ctx.saved_tensors
            gx, gw, _ = torch.ops.aten.convolution_backward(delta, x, w, None, [1, 1], [0, 0], [1, 1], False,
                                                            [0, 0], 1, [True, True, False])
            with torch.enable_grad():
                xx = x.detach().requires_grad_()
                torch.autograd.grad(torch.nn.functional.conv2d(xx, w.detach()), xx, delta)
            return gx, gw

    registry.register(Cheat.forward, Cheat)  # counted as a δ formula, as a user's registered Function is
    try:
        x = torch.randn(1, 2, 5, 5, requires_grad=True)
        w = torch.randn(3, 2, 3, 3, requires_grad=True)
        rec = _Recorder()
        _backward(Cheat.apply(x, w), [x, w], rec)
        bad = rec.violations()
        assert any("convolution_backward" in b for b in bad), bad
        assert any("called grad" in b for b in bad), bad
    finally:
        registry.unregister(Cheat.forward)


@pytest.mark.parametrize("op", OPS)
def test_op_backward_uses_no_native_backward(op):
    if not op.supports_dtype(torch.float64, "cpu"):
        pytest.skip("no float64 samples")
    rec = _Recorder()
    for i, s in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        if i >= N_SAMPLES:
            break
        args, kwargs = _fresh((s.input, *s.args)), _fresh(dict(s.kwargs))
        leaves = [t for t in _tensors((args, kwargs)) if t.requires_grad]
        try:
            with torchbp.manual_backward():
                out = op.op(*args, **kwargs)
        except Exception:  # noqa: BLE001  (inputs native refuses too: test_opinfo holds the errors)
            continue
        try:
            _backward(out, leaves, rec)
        except Exception:  # noqa: BLE001
            continue
    assert not rec.violations(), rec.violations()
    assert rec.ops or _name(op) in NO_DELTA_BACKWARD, "no sample reached a δ backward: nothing was checked"


@pytest.mark.parametrize("mi", TWINS)
def test_twin_backward_uses_no_native_backward(mi):
    rec = _Recorder()
    for training in (True, False) if mi.train_and_eval_differ else (True,):
        cases = mi.module_inputs_func(mi, device="cpu", dtype=torch.float64, requires_grad=True, training=training)
        for case in cases[:N_MODULE]:
            ci, fi = case.constructor_input, case.forward_input
            if fi is None:
                continue
            torch.manual_seed(0)
            try:
                m = mi.module_cls(*ci.args, **ci.kwargs).to(torch.float64).train(training)
            except Exception:  # noqa: BLE001
                continue
            torchbp.swap(m)
            args, kwargs = _fresh(tuple(fi.args)), _fresh(dict(fi.kwargs))
            try:
                out = m(*args, **kwargs)
            except Exception:  # noqa: BLE001
                continue
            leaves = [t for t in _tensors((args, kwargs)) if t.requires_grad] + \
                [p for p in m.parameters() if p.requires_grad]
            _backward(out, leaves, rec)
    assert not rec.violations(), rec.violations()
    assert rec.ops, "no input reached a δ backward: nothing was checked"


def test_fused_dense_run_uses_no_native_backward():
    m = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                            torch.nn.Linear(8, 3)).double()
    torchbp.swap(m)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out = m(x)
    assert type(out.grad_fn).__name__.startswith("DenseStack"), "the run was not fused: the check checks nothing"
    rec = _Recorder()
    _backward(out, [x, *m.parameters()], rec)
    assert "DenseStackBackward" in rec.ops and not rec.violations(), (rec.ops, rec.violations())
