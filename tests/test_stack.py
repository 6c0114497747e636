"""Runs of dense layers in one δ Function (torchbp.functional.dense_stack, used by the nn.Sequential
twin): the same gradients as native and as the per-layer δ Functions, and the per-layer path wherever
something watches the layers."""
import copy

import pytest
import torch
import torch.nn as nn

import torchbp
from cases.stack import MODELS
from util import DEVICES, rel_err
from util import grad_fn_names as names


def _pair(name, dtype=torch.float64):
    torch.manual_seed(0)
    native = MODELS[name]().to(dtype)
    return native, torchbp.swap(copy.deepcopy(native))


# the values, gradients, low precision, gradchecks, vmap and routes: tests/cases/stack.py; here, that the run
# is fused (one DenseStack) where nothing watches the layers, and its per-layer fallbacks

@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6), (6,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequential_runs_fused(name, shape, dtype):
    native, twin = _pair(name, dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    assert "DenseStackBackward" in names(twin(x))
    params = dict(twin.named_parameters())  # under functional_call too (how the case table calls it)
    assert "DenseStackBackward" in names(torch.func.functional_call(twin, params, (x,)))


def test_partial_requires_grad_and_input_without_grad():
    native, twin = _pair("relu")
    for m in (native, twin):
        m[2].weight.requires_grad_(False)
    x = torch.randn(5, 6, dtype=torch.float64)
    gn = torch.autograd.grad(native(x).square().sum(), [p for p in native.parameters() if p.requires_grad])
    gt = torch.autograd.grad(twin(x).square().sum(), [p for p in twin.parameters() if p.requires_grad])
    assert all(rel_err(a, b) <= 1e-10 for a, b in zip(gt, gn))


def test_hooks_and_patched_forward_take_the_per_layer_path():
    native, twin = _pair("relu")
    x = torch.randn(5, 6, dtype=torch.float64)
    seen = []
    h = twin[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = twin(x)
    assert seen == [torch.Size([5, 8])]  # the hooked layer ran on its own and was seen
    assert "LinearBackward" in names(out) and "DenseStackBackward" not in names(out)
    h.remove()
    g = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert "DenseStackBackward" not in names(twin(x))
    finally:
        g.remove()
    assert "DenseStackBackward" in names(twin(x))


def test_audit_still_sees_every_layer():
    native, twin = _pair("seed")
    r = torchbp.audit(twin, torch.randn(5, 6, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64),
                      against=native)
    assert r.ok and {row.layer for row in r.rows} >= {"0", "1", "2", "3", "6", "7"}
    r = torchbp.audit(native, torch.randn(5, 6, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0


def test_no_grad_falls_back_autocast_fuses():
    native, twin = _pair("relu", torch.float32)
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(twin(x), native(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fused under autocast too, cast as for linear
        out, ref = twin(x), native(x)
    assert out.dtype == torch.bfloat16 and "DenseStackBackward" in names(out) and torch.equal(out, ref)
    gs = torch.autograd.grad(out.float().square().sum(), list(twin.parameters()))
    gn = torch.autograd.grad(ref.float().square().sum(), list(native.parameters()))
    assert all(g.dtype == torch.float32 and rel_err(a, g) <= 2e-2 for a, g in zip(gs, gn))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_casts_inside_the_run(device):
    """Under autocast the run casts x, W, b itself: no ToCopy node per parameter, the ∂J/∂W arrive in the
    parameters' dtype (float32), x's δ in x's; backward twice (retain_graph) and double backward work."""
    native, twin = _pair("seed", torch.float32)
    native.to(device), twin.to(device)
    x = torch.randn(5, 6, device=device, requires_grad=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out, ref = twin(x), native(x)
    assert out.dtype == torch.bfloat16  # the same bf16 products as native's (bit for bit on the CPU)
    assert torch.equal(out, ref) if device == "cpu" else rel_err(out.float(), ref.float()) <= 1e-2
    assert names(out).count("ToCopyBackward0") == 0 < names(ref).count("ToCopyBackward0")
    ps, pn = [x, *twin.parameters()], [x, *native.parameters()]
    g1 = torch.autograd.grad(out.float().square().sum(), ps, retain_graph=True)
    g2 = torch.autograd.grad(out.float().square().sum(), ps)
    gn = torch.autograd.grad(ref.float().square().sum(), pn)
    assert all(a.dtype == torch.float32 and torch.equal(a, b) and rel_err(a, n) <= 2e-2 for a, b, n in zip(g1, g2, gn))
    with torch.autocast(x.device.type, dtype=torch.bfloat16):  # create_graph replays the run, casts included
        gx = torch.autograd.grad(twin(x).float().square().sum(), x, create_graph=True)[0]
        gxn = torch.autograd.grad(native(x).float().square().sum(), x, create_graph=True)[0]
    hs = torch.autograd.grad(gx.square().sum(), list(twin.parameters()))
    hn = torch.autograd.grad(gxn.square().sum(), list(native.parameters()))
    assert all(a.dtype == torch.float32 and rel_err(a, n) <= 5e-2 for a, n in zip(hs, hn))


def test_unswap_restores_sequential():
    native, twin = _pair("relu")
    assert type(twin) is torchbp.nn.Sequential and isinstance(twin, nn.Sequential)
    torchbp.unswap(twin)
    assert type(twin) is nn.Sequential and type(twin[0]) is nn.Linear


def test_retain_graph_backward_twice_and_inplace_change_of_output_is_caught():
    native, twin = _pair("seed")  # its last activation's output is the run's output, saved for backward
    x = torch.randn(5, 6, dtype=torch.float64)
    out = twin(x).square().sum()
    g1 = torch.autograd.grad(out, list(twin.parameters()), retain_graph=True)
    g2 = torch.autograd.grad(out, list(twin.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    y = twin(x)
    y.mul_(2)  # native raises too: sigmoid's backward needs its output
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
