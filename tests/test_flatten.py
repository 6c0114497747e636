"""flatten, unflatten and identity (torchbp.functional.flatten): native's views, in-place activations after
them, twins (values, gradients and refusals: tests/cases/flatten.py)."""
import contextlib
import copy

import pytest
import torch

import torchbp
import torchbp.functional as tbf
from util import is_delta, rel_err

nn = torch.nn


# --- flatten, unflatten, identity ----------------------------------------------------------------

# values, gradients, gradcheck and the refusals: tests/cases/flatten.py; here the structure (native's views)

@pytest.mark.parametrize("args", [(0, -1), (1, -1), (1, 2), (2, 2), (-2, -1)])
def test_flatten_is_natives_view(args):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = tbf.flatten(x, *args)
    assert not is_delta(y) and (y._base is x or y is x)  # structure: native's view (x itself for one dim)


@pytest.mark.parametrize("dim,sizes", [(1, (3, 2)), (-1, (5, 1)), (0, (-1, 2)), (1, [6])])
def test_unflatten_is_natives_view(dim, sizes):
    x = torch.randn(4, 6, 5, requires_grad=True)
    assert tbf.unflatten(x, dim, sizes)._base is x


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Hardtanh])
def test_inplace_activation_after_flatten(act):
    """Flatten is structure (native's view), so in-place ops after it record into the graph of the
    caller's tensor as natively: Flatten -> ReLU(inplace=True) swaps, and a caller that goes on with the
    flattened tensor itself (not the in-place op's return value) gets native's gradients."""
    native = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), act(inplace=True), nn.Linear(12, 2)).double()
    twin = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    grads = []
    for m in (native, twin):
        m(x).square().sum().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert rel_err(a, b) <= 1e-10
    r = torchbp.audit(native, x)
    assert r.ok and r.coverage == 1.0, str(r)
    z = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for flatten, route in ((torch.flatten, contextlib.nullcontext), (tbf.flatten, torchbp.manual_backward)):
        w = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
        with route():
            h = flatten(z * 1, 1)
            h.mul_(w)  # the return values are dropped: the caller goes on with h
            act(inplace=True)(h)
            loss = (h * h).sum()
        grads.append(torch.autograd.grad(loss, (z, w)))
    for a, b in zip(*grads):
        assert rel_err(a, b) <= 1e-10
    h = tbf.flatten(torch.randn(2, 3, 2, requires_grad=True) * 1, 1)
    out = tbf.relu(h, inplace=True)
    assert out is h and (h >= 0).all()  # the caller's tensor was modified in place


@pytest.mark.parametrize("make,shape", [(lambda: nn.Flatten(), (2, 3, 4)), (lambda: nn.Flatten(0, 1), (2, 3, 4)),
                                        (lambda: nn.Unflatten(1, (2, 3)), (4, 6, 5))])
def test_flatten_twins_are_native_views(make, shape):
    x = torch.randn(shape, requires_grad=True)
    native, twin = make(), torchbp.swap(make())
    y = twin(x)
    assert torch.equal(y, native(x)) and y._base is x and not is_delta(y)


def test_identity_twin_returns_input():
    twin = torchbp.swap(nn.Sequential(nn.Identity(), nn.ReLU(inplace=True)))
    x = torch.randn(3, requires_grad=True)
    h = x * 1
    assert twin[0](h) is h
    twin(h).sum().backward()  # in-place after Identity keeps working
    assert torch.equal(x.grad, (x > 0).to(x.dtype))
