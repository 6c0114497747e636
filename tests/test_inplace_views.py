"""In-place δ ops on a view that a custom Function returned: refused, naming the op, as autograd refuses
the native op (the view's graph would not see the op: a caller going on with the view would get a gradient
without it); allowed under no_grad, as natively."""
import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf


class _ViewOf(torch.autograd.Function):
    """A user's own Function that returns a view of its input."""

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


def _view():
    return _ViewOf.apply(torch.randn(2, 3, dtype=torch.float64, requires_grad=True) * 1)


ACTIVATIONS = {  # name shown in the error: (δ call, native call)
    "relu_": (lambda v: tbf.relu(v, inplace=True), lambda v: F.relu(v, inplace=True)),
    "hardtanh_": (lambda v: tbf.hardtanh(v, inplace=True), lambda v: F.hardtanh(v, inplace=True)),
    "elu_": (lambda v: tbf.elu(v, inplace=True), lambda v: F.elu(v, inplace=True)),
    "silu_": (lambda v: tbf.silu(v, inplace=True), lambda v: F.silu(v, inplace=True)),  # the copy-back path
    "selu_": (lambda v: tbf.selu(v, inplace=True), lambda v: torch.selu_(v)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_inplace_activation_on_a_custom_functions_view_is_refused(name):
    ours, native = ACTIVATIONS[name]
    with pytest.raises(RuntimeError, match="view and is being modified inplace"):
        native(_view())
    v = _view()
    before = v.detach().clone()
    with pytest.raises(RuntimeError, match=rf"torchbp\.functional\.{name}: the input is a view returned by a "
                                           r"custom Function \(_ViewOfBackward\)"):
        ours(v)
    assert torch.equal(v, before)  # nothing written


@pytest.mark.parametrize("op", [lambda v: v.mul_(2.0), lambda v: v.add_(1.0), lambda v: v.clamp_(min=0),
                                lambda v: v.sigmoid_(), lambda v: v.masked_fill_(v > 0, 0.0)])
def test_inplace_tensor_op_on_a_custom_functions_view_is_refused(op):
    with pytest.raises(RuntimeError, match="view and is being modified inplace"):
        op(_view())
    with torchbp.manual_backward():
        v = _view()
        with pytest.raises(RuntimeError, match=r"torchbp\.functional\.\w+_: the input is a view returned by a "
                                               r"custom Function"):
            op(v)


def test_no_grad_writes_the_view_as_natively():
    v, w = _view(), _view()
    with torch.no_grad():
        tbf.relu(v, inplace=True)
        F.relu(w, inplace=True)
        with torchbp.manual_backward():
            v.mul_(2.0)
        w.mul_(2.0)
    assert (v >= 0).all() and (w >= 0).all()


def test_a_caller_going_on_with_the_view_never_gets_a_gradient_without_the_op():
    """What used to happen: the op ran out of place and its values were copied into the view behind
    autograd's back, so (v * v).sum() below differentiated as if the ReLU were not there."""
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    v = _ViewOf.apply(x * 1)
    with pytest.raises(RuntimeError, match="relu_"):
        tbf.relu(v, inplace=True)
    v2 = _ViewOf.apply(x * 1).clone()  # the way out the message names
    tbf.relu(v2, inplace=True)
    (g,) = torch.autograd.grad((v2 * v2).sum(), x)
    assert torch.equal(g, 2 * x.detach().clamp(min=0))
