"""Runs of dense layers in one δ Function (torchbp.functional.dense_stack, used by the nn.Sequential
twin): the same gradients as native and as the per-layer δ Functions, and the per-layer path wherever
something watches the layers."""
import copy

import pytest
import torch
import torch.nn as nn

import torchbp
from torchbp.functional import activation as A
from torchbp.functional.stack import dense_stack
from util import DEVICES, LOW, assert_matches_native, gradchecks, rel_err
from util import grad_fn_names as names


MODELS = {
    "relu": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)),
    "seed": lambda: nn.Sequential(*[m for a, b in ((6, 6), (6, 5), (5, 4), (4, 3))
                                    for m in (nn.Linear(a, b), nn.Sigmoid())]),  # the derivation's network, 6 inputs
    "mixed": lambda: nn.Sequential(nn.Linear(6, 7, bias=False), nn.Tanh(), nn.Linear(7, 7), nn.GELU(),
                                   nn.Linear(7, 5), nn.SiLU(), nn.Linear(5, 4), nn.LeakyReLU(0.2),
                                   nn.Linear(4, 3), nn.GELU(approximate="tanh")),
    "more": lambda: nn.Sequential(nn.Linear(6, 7), nn.SELU(), nn.Linear(7, 7), nn.CELU(0.7), nn.Linear(7, 5),
                                  nn.Mish(), nn.Linear(5, 5), nn.Hardswish(inplace=True), nn.Linear(5, 3),
                                  nn.Hardsigmoid()),
    "interrupted": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.0),
                                         nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 3), nn.Linear(3, 3)),
}


def _pair(name, dtype=torch.float64):
    torch.manual_seed(0)
    native = MODELS[name]().to(dtype)
    return native, torchbp.swap(copy.deepcopy(native))


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6), (6,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_fused_sequential_matches_native_float64(name, shape, device):
    native, twin = _pair(name)
    native.to(device), twin.to(device)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    out = twin(x)
    assert "DenseStackBackward" in names(out)
    assert_matches_native(twin, native, (x,), device=device)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("device", DEVICES)
def test_fused_sequential_low_precision(dtype, device):
    native, twin = _pair("mixed", torch.float32)

    def call(module):  # module(x) as a function of (x, *parameters): the helper converts and compares all
        names = [n for n, _ in module.named_parameters()]
        return lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps)), (x,))
    ps = [p.detach().requires_grad_() for p in native.parameters()]
    assert "DenseStackBackward" in names(call(twin)(torch.randn(5, 6), *ps))
    assert_matches_native(call(twin.to(device)), call(native.to(device)), (torch.randn(5, 6, requires_grad=True), *ps),
                          dtype=dtype, device=device)


def test_dense_stack_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    W0, b0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True)
    W1 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def f(x, W0, b0, W1):
        return dense_stack(x, [(W0, b0, (A.Tanh, ())), (W1, None, (A.GELU, ("none",)))])
    gradchecks(f, (x, W0, b0, W1))


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


def test_no_grad_and_bad_inputs_fall_back_autocast_fuses():
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
    with pytest.raises(RuntimeError, match="torchbp.functional.linear"):
        twin(torch.randn(5, 6, dtype=torch.float64))  # the per-layer path names the problem
    with pytest.raises(RuntimeError, match="torchbp.functional.linear"):
        twin(torch.randn(5, 7))


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


def test_vmap_and_compile_use_the_per_layer_path():
    native, twin = _pair("relu")
    xs = torch.randn(3, 5, 6, dtype=torch.float64)
    params = dict(twin.named_parameters())
    f = lambda p, x: torch.func.functional_call(twin, p, (x,)).square().sum()  # noqa: E731
    gs = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(params, xs)
    for i in range(3):
        ref = torch.autograd.grad(native(xs[i]).square().sum(), list(native.parameters()))
        assert all(rel_err(gs[n][i], r) <= 1e-10 for n, r in zip(params, ref))


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
