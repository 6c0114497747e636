"""Inputs native accepts at the edges: in-place dropout on a view, empty batches (N = 0), zero-size
contraction dims, 1-element pooling tuples, degenerate norms and clamps, negative pads in every mode, 5-D
area interpolation, saturated float32 attention. Each against native autograd (float64 rel 1e-10, NaN where
native has NaN; float32 by the oracle rule)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
from util import FLOOR, rel_err

nn = torch.nn


def _grads(out, leaves, seed=1):
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
    outs = [o for o in outs if o.requires_grad]
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    gs = torch.autograd.grad(outs, leaves, vs, allow_unused=True)
    return [torch.zeros_like(l) if x is None else x for l, x in zip(leaves, gs)]


def _same(a, b, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN unlike native"
    a, b = a.nan_to_num(0), b.nan_to_num(0)
    assert rel_err(a, b) <= 1e-10, f"{what}: rel err {rel_err(a, b):.3e}"


# --- in-place dropout on a view ---------------------------------------------------------------------

class _FlattenDrop(nn.Module):
    """The torchvision classifier head: flatten, then an in-place Dropout, then a Linear."""

    def __init__(self, drop):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = drop
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        if isinstance(self.drop, nn.Dropout1d):  # (N, C, L): the channels dropped
            return self.fc(self.drop(torch.flatten(self.conv(x), 2)).flatten(1))
        return self.fc(self.drop(torch.flatten(self.conv(x), 1)))


def _drop_model(kind):
    return _FlattenDrop(nn.Dropout(0.3, inplace=True) if kind == "dropout" else nn.Dropout1d(0.3, inplace=True))


@pytest.mark.parametrize("kind", ["dropout", "dropout1d"])
@pytest.mark.parametrize("how", ["swapped", "manual_backward"])
def test_inplace_dropout_on_a_view_trains_like_native(kind, how, monkeypatch):
    calls = _count_backward(monkeypatch)
    torch.manual_seed(0)
    native = _drop_model(kind).double()
    ours = copy.deepcopy(native)
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    if how == "swapped":
        torchbp.swap(ours)
    torch.manual_seed(5)
    out_n = native(x)
    state_n = torch.get_rng_state()
    torch.manual_seed(5)
    if how == "swapped":
        out_s = ours(x)
    else:
        with torchbp.manual_backward():
            out_s = ours(x)
    assert torch.equal(torch.get_rng_state(), state_n)  # the same random draws as native
    _same(out_s, out_n, "output")
    gs = _grads(out_s, list(ours.parameters()))
    gn = _grads(out_n, list(native.parameters()))
    for (k, _), a, b in zip(ours.named_parameters(), gs, gn):
        _same(a, b, k)
    assert calls == [1]  # the δ formula gave the dropout's gradient (not native's in-place path)


def _count_backward(monkeypatch):
    from torchbp.functional.dropout import InplaceDropout
    calls, backward = [], InplaceDropout.backward

    def counted(ctx, delta):
        calls.append(1)
        return backward(ctx, delta)
    monkeypatch.setattr(InplaceDropout, "backward", staticmethod(counted))
    return calls


def _graph(t):
    seen, stack = [], [t.grad_fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.append(f)
        stack.extend(n for n, _ in f.next_functions)
    return seen


@pytest.mark.parametrize("p", [0.4, 1.0])
@pytest.mark.parametrize("op", [F.dropout, F.dropout1d, F.dropout2d])
def test_functional_inplace_dropout_on_a_view(op, p, monkeypatch):
    calls = _count_backward(monkeypatch)
    torch.manual_seed(0)
    base = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    results = []
    for routed in (False, True):
        x = base * 1.0
        view = x[:, :, 1:] if op is not F.dropout2d else x.unsqueeze(-1)[:, :, 1:]
        torch.manual_seed(3)
        if routed:
            with torchbp.manual_backward():
                y = op(view, p, True, True)
        else:
            y = op(view, p, True, True)
        assert y is view or y.data_ptr() == view.data_ptr()  # written in place, as native does
        results.append((x.detach().clone(), y.detach(), _grads(x, [base])[0]))
    for a, b in zip(*results):
        _same(b, a)
    assert calls == [1]


def test_inplace_dropout_in_the_audit():
    torch.manual_seed(0)
    model = _FlattenDrop(nn.Dropout(0.3, inplace=True)).double().train()
    report = torchbp.audit(model, torch.randn(4, 3, 6, 6, dtype=torch.float64))
    assert report.ok, str(report)


def test_inplace_dropout_on_a_leaf_names_the_layer():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError) as e:
        torchbp.functional.dropout(x, 0.5, True, True)
    assert "your Function" not in str(e.value)
    with pytest.raises(RuntimeError) as e_native:
        F.dropout(x, 0.5, True, True)
    assert "leaf" in str(e_native.value) and "leaf" in str(e.value)


# --- refusals where native computes -----------------------------------------------------------------

def _check(fn, args, kwargs=None, *, seed=0):
    """fn under manual_backward() against native: outputs and gradients (float64, NaN where native's)."""
    kwargs = kwargs or {}
    results = []
    for routed in (False, True):
        a = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
             for t in args]
        torch.manual_seed(seed)
        if routed:
            with torchbp.manual_backward():
                out = fn(*a, **kwargs)
            outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
            if any(o.requires_grad for o in outs) and any(t.numel() for t in outs):
                assert any(torchbp.registry.is_delta_function(getattr(type(f), "_forward_cls", None))
                           for o in outs for f in _graph(o)), "no δ Function ran"
        else:
            out = fn(*a, **kwargs)
        outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
        leaves = [t for t in a if isinstance(t, torch.Tensor) and t.requires_grad]
        results.append([o.detach() for o in outs] + _grads(outs, leaves))
    for i, (s, n) in enumerate(zip(results[1], results[0])):
        _same(s, n, f"item {i}")


def _t(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


def test_hardtanh_with_equal_bounds():
    _check(F.hardtanh, (_t(4, 5),), dict(min_val=0.0, max_val=0.0))
    _check(F.hardtanh, (_t(4, 5),), dict(min_val=0.5, max_val=0.5))
    with pytest.raises(ValueError, match="torchbp.functional.hardtanh.*greater"):
        torchbp.functional.hardtanh(_t(3), 1.0, 0.0)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad", [(-1, 1), (1, -1), (-1, 2, 0, 0), (2, -1, 1, 1), (-1, -1, 2, -1), (0, -2, -1, 1)])
def test_negative_pads_in_every_mode(mode, pad):
    _check(F.pad, (_t(2, 3, 5, 6) if len(pad) == 4 else _t(2, 3, 5),), dict(pad=pad, mode=mode))


@pytest.mark.parametrize("call", [
    lambda x: F.max_pool2d(x, (3,), (2,), (1,)),
    lambda x: F.avg_pool2d(x, (3, 3), (1, 1), (1,), True, False, 2),
    lambda x: F.avg_pool2d(x, (3,), stride=(2,)),
    lambda x: F.max_pool1d(x.flatten(2), (3,), (2,)),
])
def test_pooling_with_one_element_tuples(call):
    _check(call, (_t(2, 3, 7, 7),))


def test_zero_size_contraction_dims():
    _check(F.linear, (_t(3, 4, 0), _t(5, 0)))
    _check(F.linear, (_t(3, 4, 0), _t(5, 0), _t(5)))
    _check(torch.matmul, (_t(5, 5, 0), _t(0, 5)))
    _check(torch.matmul, (_t(2, 5, 0), _t(2, 0, 3)))


def test_degenerate_norm_inputs():
    _check(F.batch_norm, (_t(0), None, None), dict(training=True))
    _check(F.group_norm, (_t(0, 2), 1))
    _check(F.group_norm, (_t(0, 4, 3), 2, _t(4), _t(4)))


@pytest.mark.parametrize("kw", [dict(size=(2, 3, 4)), dict(scale_factor=0.5), dict(scale_factor=(1.5, 0.5, 2.0))])
def test_area_interpolation_of_5d_inputs(kw):
    _check(F.interpolate, (_t(2, 3, 4, 6, 5),), dict(mode="area", **kw))


# --- empty batches (N = 0) --------------------------------------------------------------------------

def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in (out if isinstance(out, (tuple, list)) else ()) for t in _flat(o)]


EMPTY = {
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), (0, 3, 7)),
    "Conv2d": (lambda: nn.Conv2d(4, 6, 3, groups=2), (0, 4, 7, 7)),
    "Conv3d": (lambda: nn.Conv3d(3, 4, 3), (0, 3, 5, 5, 5)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), (0, 3, 7)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (0, 4, 5, 5)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(3, 4, 3), (0, 3, 4, 4, 4)),
    "LSTM": (lambda: nn.LSTM(5, 6, num_layers=2, batch_first=True), (0, 4, 5)),
    "LSTM-proj": (lambda: nn.LSTM(5, 6, proj_size=3, bidirectional=True), (4, 0, 5)),
    "GRU": (lambda: nn.GRU(5, 6), (4, 0, 5)),
    "RNN": (lambda: nn.RNN(5, 6, num_layers=2, bidirectional=True, batch_first=True), (0, 4, 5)),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(8, 2, batch_first=True), (0, 4, 8)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (0, 4, 5)),
    "BatchNorm2d-eval": (lambda: nn.BatchNorm2d(4).eval(), (0, 4, 5, 5)),
    "LayerNorm": (lambda: nn.LayerNorm(5), (0, 5)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (0, 3, 6, 6)),
    "AvgPool1d": (lambda: nn.AvgPool1d(2), (0, 3, 6)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(2), (0, 3, 6, 6)),
    "AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d(2), (0, 3, 6, 6)),
    "Linear": (lambda: nn.Linear(5, 3), (0, 5)),
    "Embedding": (lambda: nn.Embedding(10, 3), None),
}


@pytest.mark.parametrize("name", list(EMPTY))
def test_empty_batch_like_native(name):
    make, shape = EMPTY[name]
    torch.manual_seed(0)
    native = make().double()
    twin = torchbp.swap(copy.deepcopy(native))
    res = []
    for m in (native, twin):
        if shape is None:
            args = (torch.zeros(0, 3, dtype=torch.long),)
        else:
            x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            args = (x, x, x) if name == "MultiheadAttention" else (x,)
        outs = [o for o in _flat(m(*args)) if o is not None]
        leaves = [a for a in args[:1] if a.requires_grad] + list(m.parameters())
        res.append([o.detach() for o in outs] + _grads(outs, leaves))
    assert len(res[0]) == len(res[1])
    for i, (s, n) in enumerate(zip(res[1], res[0])):
        _same(s, n, f"{name} item {i}")


@pytest.mark.parametrize("loss,native", [
    (torchbp.nn.HalfSquaredError(), lambda h, y: 0.5 * F.mse_loss(h, y, reduction="sum") / h.shape[0]),
    (torchbp.nn.MSELoss(), F.mse_loss),
    (torchbp.nn.CrossEntropyLoss(), None),
])
def test_losses_over_an_empty_batch(loss, native):
    h = _t(0, 3)
    y = torch.zeros(0, dtype=torch.long) if native is None else _t(0, 3, grad=False)
    out = loss(h, y)
    ref = F.cross_entropy(h, y) if native is None else F.mse_loss(h, y)  # NaN: a mean over nothing
    assert out.shape == ref.shape and out.isnan() and ref.isnan()
    (g,) = torch.autograd.grad(out, h)
    assert g.shape == h.shape
    _check(lambda a, b: loss(a, b), (h, y))


# --- float32 attention on saturated inputs ----------------------------------------------------------

@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("scale_in", [4.0, 10.0])
def test_saturated_float32_attention_meets_the_oracle_rule(gqa, scale_in):
    """Large |q·k| (P nearly one-hot per row, δ_P − Σ δ_P ⊙ P cancelling): δ_Q, δ_K, δ_V in float32 within
    2 x native's error against float64 + floor, over seeded draws."""
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(2, 4, 6, 16, generator=g) * scale_in
        k = torch.randn(2, 2 if gqa else 4, 9, 16, generator=g) * scale_in
        v = torch.randn(2, 2 if gqa else 4, 9, 16, generator=g)
        kw = {"enable_gqa": True} if gqa else {}
        res = {}
        for name, dtype in (("oracle", torch.float64), ("native", torch.float32), ("ours", torch.float32)):
            a = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            if name == "ours":
                with torchbp.manual_backward():
                    y = F.scaled_dot_product_attention(*a, **kw)
            else:
                y = F.scaled_dot_product_attention(*a, **kw)
            res[name] = [y] + _grads(y, a)
        for i, (s, n, o) in enumerate(zip(res["ours"], res["native"], res["oracle"])):
            es, en = rel_err(s, o), rel_err(n, o)
            assert es <= 2 * en + FLOOR[torch.float32], f"seed {seed} item {i}: err {es:.3e} vs native {en:.3e}"


class _Empty(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = self.norm(self.conv(x)).transpose(1, 2)
        return self.fc(self.rnn(h)[0])


def test_empty_batch_in_the_audit():
    torch.manual_seed(0)
    model = _Empty().double()
    x = torch.randn(0, 3, 7, dtype=torch.float64)
    assert torchbp.audit(model, x).ok
    assert torchbp.audit(model, x, torch.zeros(0, 5, 2, dtype=torch.float64)).ok


def test_autograd_refusals_name_the_delta_function():
    class TwoOutputs(torchbp.functional.DeltaFunction):  # writes a view in place and returns two tensors
        @staticmethod
        def forward(a):
            return a.mul_(2), a.detach().clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_dirty(inputs[0])
            ctx.mark_non_differentiable(output[1])

        @staticmethod
        def backward(ctx, delta, _):
            return delta * 2

    view = (_t(3, 4) * 1)[:, 1:]
    with pytest.raises(RuntimeError) as e:
        TwoOutputs.apply(view)
    assert "TwoOutputs" in str(e.value) and "your Function" not in str(e.value)
