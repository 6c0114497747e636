"""δ dropout (torchbp.functional.dropout): the same mask and bits as native, p = 0 and 1, eval, in place,
channel dropout, twins (gradchecks, low precision, routes and refusals: tests/cases/dropout.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import DEVICES, is_delta, rel_err

nn = torch.nn


# --- dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_dropout_same_mask_and_bits_as_native(p, dtype, layout, device):
    x0 = torch.randn(33, 65, dtype=dtype, device=device)
    x0 = x0.t() if layout == "transposed" else x0
    xs, xn = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    if layout == "transposed":
        xs, xn = x0.t().clone().t().requires_grad_(), x0.t().clone().t().requires_grad_()
    torch.manual_seed(7)
    ys = tbf.dropout(xs, p)
    state_s = torch.get_rng_state()
    torch.manual_seed(7)
    yn = F.dropout(xn, p)
    assert torch.equal(ys, yn) and torch.equal(state_s, torch.get_rng_state())  # same draws, same bits
    assert is_delta(ys)
    v = torch.randn_like(yn)
    (gs,), (gn,) = torch.autograd.grad(ys, xs, v), torch.autograd.grad(yn, xn, v)
    assert torch.equal(gs != 0, gn != 0)
    assert rel_err(gs, gn) <= (1e-10 if dtype == torch.float64 else 1e-2)


def test_dropout_saves_a_bool_mask():
    x = torch.randn(100, requires_grad=True)
    y = tbf.dropout(x, 0.3)
    saved = [t for t in y.grad_fn.saved_tensors]
    assert len(saved) == 1 and saved[0].dtype == torch.bool


def test_dropout_p0_p1_eval_and_inplace():
    x = torch.randn(4, 5, requires_grad=True)
    assert tbf.dropout(x, 0.0) is x and tbf.dropout(x, 0.5, training=False) is x
    y = tbf.dropout(x, 1.0)
    assert torch.equal(y, F.dropout(x, 1.0)) and is_delta(y)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.zeros_like(x))
    for p in (0.4, 1.0):
        h_s, h_n = x * 1.0, x * 1.0
        torch.manual_seed(3)
        out_s = tbf.dropout(h_s, p, inplace=True)
        torch.manual_seed(3)
        out_n = F.dropout(h_n, p, inplace=True)
        assert out_s is h_s and torch.equal(out_s, out_n)
        (gs,), (gn,) = torch.autograd.grad(out_s.sum(), x), torch.autograd.grad(out_n.sum(), x)
        torch.testing.assert_close(gs, gn)


def test_dropout_twin_same_mask_and_eval_returns_input():
    m = nn.Dropout(0.25)
    twin = torchbp.swap(copy.deepcopy(m))
    x = torch.randn(8, 9)
    torch.manual_seed(1)
    a = twin(x)
    torch.manual_seed(1)
    assert torch.equal(a, m(x))
    twin.eval()
    assert twin(x) is x


FEATURE_DROPOUT = [(tbf.dropout1d, F.dropout1d, nn.Dropout1d, [(3, 4, 5), (4, 5)]),
                   (tbf.dropout2d, F.dropout2d, nn.Dropout2d, [(2, 3, 4, 5), (3, 4, 5)]),
                   (tbf.dropout3d, F.dropout3d, nn.Dropout3d, [(2, 3, 2, 4, 5), (3, 2, 4, 5)])]


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.3, 1.0])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("ours,native,module,shapes", FEATURE_DROPOUT, ids=["1d", "2d", "3d"])
def test_channel_dropout_same_channels_and_delta_as_native(ours, native, module, shapes, inplace, p, device):
    for shape in shapes:
        x = torch.randn(shape, dtype=torch.float64, device=device)
        xs, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(3)
        ys = ours(xs.clone() if inplace else xs, p, inplace=inplace)
        after_s = torch.rand(1, device=device)  # the same RNG draws used up, too
        torch.manual_seed(3)
        yn = native(xn.clone() if inplace else xn, p, inplace=inplace)
        assert torch.equal(ys, yn) and torch.equal(after_s, torch.rand(1, device=device)) and is_delta(ys)
        v = torch.randn_like(ys)
        assert torch.equal(torch.autograd.grad(ys, xs, v)[0], torch.autograd.grad(yn, xn, v)[0])
    twin = torchbp.swap(module(p))
    assert type(twin) is not module and isinstance(twin, module)
    torch.manual_seed(4)
    a = twin(x)
    torch.manual_seed(4)
    assert torch.equal(a, module(p)(x)) and twin.eval()(x) is x


def test_dropout2d_warns_on_3d_as_native():
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input"):
        tbf.dropout2d(torch.randn(2, 3, 4))
