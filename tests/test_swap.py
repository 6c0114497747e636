"""swap / unswap / swapped / register / manual_backward: routing changes the backward, nothing else."""
import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from torchbp import registry
from util import grad_fn_names


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                               torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 3)).double()


def test_swap_changes_only_the_class():
    model = mlp()
    params = [id(p) for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    assert torchbp.swap(model) is model
    assert type(model[0]) is torchbp.nn.Linear and isinstance(model[0], torch.nn.Linear)
    assert type(model[3]) is torchbp.nn.ReLU and model[3].inplace
    assert [id(p) for p in model.parameters()] == params
    assert opt.param_groups[0]["params"][0] is model[0].weight
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(state)
    model(torch.randn(2, 4, dtype=torch.float64))
    assert calls == [1]
    torchbp.swap(model)  # idempotent
    assert type(model[0]) is torchbp.nn.Linear
    torchbp.unswap(model)
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.Tanh, torch.nn.Linear, torch.nn.ReLU,
                                         torch.nn.Linear]


def test_swapped_gradients_equal_native_and_come_from_delta_functions():
    model, x = mlp(), torch.randn(5, 4, dtype=torch.float64)
    native = torch.autograd.grad(model(x).pow(2).sum(), list(model.parameters()))
    with torchbp.swapped(model):
        out = model(x).pow(2).sum()
        names = grad_fn_names(out)
        ours = torch.autograd.grad(out, list(model.parameters()))
    # an nn.Sequential of Linear/activation runs through one fused δ Function (tests/test_stack.py)
    assert "DenseStackBackward" in names and not {"AddmmBackward0", "TanhBackward0"} & set(names)
    for a, b in zip(ours, native):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert type(model[0]) is torch.nn.Linear


def test_swapped_restores_only_what_it_swapped():
    model = mlp()
    torchbp.swap(model[0])
    with torchbp.swapped(model):
        assert all(registry.native_for(type(m)) for m in model)
    assert type(model[0]) is torchbp.nn.Linear  # was a twin before the block: stays one
    assert type(model[2]) is torch.nn.Linear


def test_swapped_restores_on_error():
    model = mlp()
    with pytest.raises(ValueError):
        with torchbp.swapped(model):
            raise ValueError
    assert type(model[0]) is torch.nn.Linear


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.s


class MyLinear(torch.nn.Linear):  # a user's subclass with its own forward: never swapped
    def forward(self, x):
        return super().forward(x) * 2


def test_strict_refuses_an_unroutable_module_and_changes_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), Scale(), torch.nn.Sequential(MyLinear(3, 3)))
    scripted = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.jit.script(torch.nn.Linear(3, 3)))
    with pytest.raises(TypeError) as e:
        torchbp.swap(scripted, strict=True)
    assert "1: RecursiveScriptModule" in str(e.value) and type(scripted[0]) is torch.nn.Linear
    with pytest.warns(UserWarning, match=r"2 module\(s\) left native.*\n  Scale ×1: 1\n  MyLinear ×1: 2.0"):
        torchbp.swap(model)
    assert type(model[0]) is torchbp.nn.Linear and type(model[2][0]) is MyLinear
    assert torchbp.unswappable(model) == [("1", "Scale"), ("2.0", "MyLinear")]


def test_swapped_model_deepcopies_and_pickles():
    model = torchbp.swap(mlp())
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone[0]) is torchbp.nn.Linear
    assert type(copy.deepcopy(model)[2]) is torchbp.nn.Linear


def test_twins_take_native_constructor_arguments():
    a = torchbp.nn.Linear(3, 4, bias=False, dtype=torch.float64)
    b = torch.nn.Linear(3, 4, bias=False, dtype=torch.float64)
    assert list(a.state_dict()) == list(b.state_dict()) and a.weight.dtype == torch.float64
    assert repr(torchbp.nn.LeakyReLU(0.2, inplace=True)) == "LeakyReLU[δ](negative_slope=0.2, inplace=True)"


def test_register_user_layer_twin_and_decorator():
    class ScaleTwin(Scale):
        def forward(self, x):
            return tbf.linear(x, torch.diag(self.s))

    try:
        assert torchbp.register(Scale, ScaleTwin) is ScaleTwin
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), Scale())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torchbp.swap(model, strict=True)
        assert type(model[1]) is ScaleTwin
        torchbp.unswap(model)
        assert type(model[1]) is Scale
    finally:
        registry.unregister(Scale)
    assert registry.twin_for(Scale) is None and registry.native_for(ScaleTwin) is None

    with pytest.raises(TypeError, match="must be a subclass"):
        torchbp.register(Scale, torchbp.nn.Linear)
    with pytest.raises(TypeError, match="does not override forward"):
        torchbp.register(Scale, type("NoForward", (Scale,), {}))


def test_register_function_routes_under_manual_backward():
    def my_square(x):
        return x * x

    class Square(torch.autograd.Function):
        """a = z²; δ_z = 2 z δ_a."""

        @staticmethod
        def forward(z):
            return z * z

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return 2 * z * g

    # a user's own function must be reached through torch's override protocol to be routed
    def routed(x):
        if torch.overrides.has_torch_function((x,)):
            return torch.overrides.handle_torch_function(routed, (x,), x)
        return my_square(x)

    try:
        torchbp.register(routed, Square)
        x = torch.randn(3, requires_grad=True)
        with torchbp.manual_backward():
            y = routed(x)
        assert type(y.grad_fn).__name__ == "SquareBackward"
        assert registry.is_delta_function(Square)
    finally:
        registry.unregister(routed)
    assert registry.function_for(routed) is None and not registry.is_delta_function(Square)


def test_manual_backward_routes_functional_calls():
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, dtype=torch.float64)

    def f():
        return F.softmax(torch.tanh(F.linear(x, W)), dim=-1).sum(0).pow(2).sum()

    (native,) = torch.autograd.grad(f(), W)
    with torchbp.manual_backward():
        out = f()
    names = grad_fn_names(out)
    assert {"LinearBackward", "TanhBackward", "SoftmaxBackward"} <= set(names)
    (ours,) = torch.autograd.grad(out, W)
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=0)


def test_manual_backward_leaves_gradless_calls_native():
    x = torch.randn(2, 4)
    with torchbp.manual_backward():
        y = F.linear(x, torch.randn(3, 4))
        with torch.no_grad():
            z = F.relu(torch.randn(3, requires_grad=True))
    assert y.grad_fn is None and z.grad_fn is None


def test_swap_rejects_non_module():
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        torchbp.swap(lambda x: x)


def test_lazy_modules_swapped_before_their_first_forward_become_twins():
    def make():
        return nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    native, twin = make(), torchbp.swap(make())
    assert all(type(m) is not type(n) and isinstance(m, type(n)) for m, n in zip(twin, native))
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)  # the lazy modules initialise their parameters on the first call
    out_n = native(x)
    torch.manual_seed(0)
    out_t = twin(x)
    assert [type(m) for m in twin] == [torchbp.registry.twin_for(type(m)) for m in native]  # became twins
    assert type(out_t.grad_fn).__name__ == "LinearBackward" and torch.allclose(out_t, out_n)
    gn = torch.autograd.grad(out_n.square().sum(), list(native.parameters()))
    gt = torch.autograd.grad(out_t.square().sum(), list(twin.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(gt, gn))
    torchbp.unswap(twin)
    assert [type(m) for m in twin] == [type(m) for m in native]
    lazy = torchbp.swap(make())
    torchbp.unswap(lazy)  # before materialising: back to the native lazy classes
    assert [type(m) for m in lazy] == [type(m) for m in make()]
