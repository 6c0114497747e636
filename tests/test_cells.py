"""δ recurrent cells (RNNCell / GRUCell / LSTMCell), LSTM with proj_size, and PackedSequence input against
native: float64, gradchecks, low precision, twins, manual_backward routes."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import torchbp
import torchbp.functional.rnn as tbr
import torchbp.nn.rnn as tbn
from util import assert_matches_native, gradchecks, grad_fn_names


def _pair(kind, *args, **kw):
    torch.manual_seed(0)
    nat = getattr(torch.nn, kind)(*args, **kw).double()
    ours = torchbp.swap(getattr(torch.nn, kind)(*args, **kw).double())
    ours.load_state_dict(nat.state_dict())
    assert type(ours) is getattr(tbn, kind)
    return nat, ours


def _call(mod, packed=None):
    """The module as a function of (x, *states, *parameters)."""
    names = [n for n, _ in mod.named_parameters()]

    def f(x, *rest):
        n_states = len(rest) - len(names)
        states, params = rest[:n_states], rest[n_states:]
        hx = None if not states else states if n_states == 2 else states[0]
        inp = x if packed is None else packed(x)
        out = torch.func.functional_call(mod, dict(zip(names, params)), (inp, hx))
        if packed is not None:  # compare the padded output and the states
            out = (pad_packed_sequence(out[0])[0], out[1])
        return out
    return f


def _params(mod):
    return tuple(p.detach().clone().requires_grad_() for p in mod.parameters())


CELLS = [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")), ("GRUCell", {}), ("LSTMCell", {}),
         ("RNNCell", dict(bias=False)), ("GRUCell", dict(bias=False)), ("LSTMCell", dict(bias=False))]


@pytest.mark.parametrize("kind,kw", CELLS, ids=[f"{k}-{kw}" for k, kw in CELLS])
@pytest.mark.parametrize("batched,h0", list(itertools.product([True, False], [True, False])))
def test_cell_matches_native(kind, kw, batched, h0):
    nat, ours = _pair(kind, 3, 4, **kw)
    x = torch.randn((2, 3) if batched else (3,), dtype=torch.float64, requires_grad=True)
    states = ()
    if h0:
        states = tuple(torch.randn((2, 4) if batched else (4,), dtype=torch.float64, requires_grad=True)
                       for _ in range(2 if kind == "LSTMCell" else 1))
    args = (x, *states, *_params(nat))
    assert_matches_native(_call(ours), _call(nat), args)
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(_call(ours), _call(nat), args, dtype=dtype)


@pytest.mark.parametrize("fn", ["rnn_tanh_cell", "rnn_relu_cell", "gru_cell", "lstm_cell"])
def test_cell_functions_gradchecks_and_routes(fn):
    g = torch.Generator().manual_seed(1)
    G = {"gru_cell": 3, "lstm_cell": 4}.get(fn, 1) * 3
    x, h = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    W_ih, W_hh = torch.randn(G, 2, generator=g, dtype=torch.float64), torch.randn(G, 3, generator=g, dtype=torch.float64)
    b_ih, b_hh = torch.randn(G, generator=g, dtype=torch.float64), torch.randn(G, generator=g, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, h, W_ih, W_hh, b_ih, b_hh)]
    if fn == "lstm_cell":
        c = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
        ours = lambda x, h, c, *w: getattr(tbr, fn)(x, (h, c), *w)  # noqa: E731
        native = lambda x, h, c, *w: getattr(torch, fn)(x, (h, c), *w)  # noqa: E731
        args = [x, h, c, *args[2:]]
    else:
        ours, native = getattr(tbr, fn), getattr(torch, fn)
    assert_matches_native(ours, native, tuple(args))
    gradchecks(ours, tuple(args))
    assert torchbp.registry.function_for(getattr(torch, fn)) is getattr(tbr, fn)
    with torchbp.manual_backward():
        out = native(*args)
    out = out[0] if isinstance(out, tuple) else out
    assert any(n.endswith(("LayerBackward", "CellOutputBackward")) for n in grad_fn_names(out)), grad_fn_names(out)


def test_cell_errors_name_the_op():
    with pytest.raises(RuntimeError, match="gru_cell: input must be 1-D"):
        tbr.gru_cell(torch.randn(2, 3, 3), torch.randn(2, 4), torch.randn(12, 3), torch.randn(12, 4))
    with pytest.raises(RuntimeError, match="rnn_tanh_cell: input has 5 features"):
        tbr.rnn_tanh_cell(torch.randn(2, 5), torch.randn(2, 4), torch.randn(4, 3), torch.randn(4, 4))


# --- LSTM with proj_size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias,h0",
                         list(itertools.product([1, 2], [False, True], [False, True], [True, False], [True, False])))
def test_lstm_proj_matches_native(num_layers, bidirectional, batch_first, bias, h0):
    nat, ours = _pair("LSTM", 3, 5, proj_size=2, num_layers=num_layers, bidirectional=bidirectional,
                      batch_first=batch_first, bias=bias)
    D = 2 if bidirectional else 1
    x = torch.randn((2, 4, 3) if batch_first else (4, 2, 3), dtype=torch.float64, requires_grad=True)
    states = (torch.randn(num_layers * D, 2, 2, dtype=torch.float64, requires_grad=True),
              torch.randn(num_layers * D, 2, 5, dtype=torch.float64, requires_grad=True)) if h0 else ()
    assert_matches_native(_call(ours), _call(nat), (x, *states, *_params(nat)))


def test_lstm_proj_unbatched_low_precision_and_gradchecks():
    nat, ours = _pair("LSTM", 3, 4, proj_size=2, bidirectional=True)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    args = (x, *_params(nat))
    assert_matches_native(_call(ours), _call(nat), args)
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(_call(ours), _call(nat), args, dtype=dtype)
    g = torch.Generator().manual_seed(2)  # T = 3, N = 2, I = 2, H = 3, P = 1
    args = tuple(torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
                 for s in ((3, 2, 2), (2, 1), (2, 3), (12, 2), (12, 1), (12,), (12,), (1, 3)))
    for reverse in (False, True):
        gradchecks(lambda *a: tbr.LSTMProjLayer.apply(*a, reverse)[:2], args)


def test_lstm_proj_loss_from_one_output_only():
    nat, ours = _pair("LSTM", 3, 4, proj_size=2, num_layers=2)
    base = (torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True), *_params(nat))
    for use in range(3):
        grads = []
        for mod in (nat, ours):
            args = tuple(a.detach().clone().requires_grad_() for a in base)
            out, (h, c) = _call(mod)(*args)
            grads.append(torch.autograd.grad((out, h, c)[use].square().sum(), args))
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


# --- PackedSequence --------------------------------------------------------------------------------------

LENGTHS = [5, 3, 3, 1]


def _packer(enforce_sorted, lengths=LENGTHS):
    return lambda x: pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("kind,kw", [("RNN", {}), ("RNN", dict(nonlinearity="relu")), ("GRU", {}), ("LSTM", {}),
                                     ("LSTM", dict(proj_size=2))], ids=["RNN", "RNN_relu", "GRU", "LSTM", "LSTMP"])
@pytest.mark.parametrize("num_layers,bidirectional,h0,sorted_",
                         list(itertools.product([1, 2], [False, True], [True, False], [True, False])))
def test_packed_matches_native(kind, kw, num_layers, bidirectional, h0, sorted_):
    nat, ours = _pair(kind, 3, 4, num_layers=num_layers, bidirectional=bidirectional, **kw)
    lengths = LENGTHS if sorted_ else [3, 5, 1, 3]
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    D, H = 2 if bidirectional else 1, kw.get("proj_size", 4)
    states = ()
    if h0:
        states = (torch.randn(num_layers * D, 4, H, dtype=torch.float64, requires_grad=True),)
        if kind == "LSTM":
            states += (torch.randn(num_layers * D, 4, 4, dtype=torch.float64, requires_grad=True),)
    packer = _packer(sorted_, lengths)
    args = (x, *states, *_params(nat))
    assert_matches_native(_call(ours, packer), _call(nat, packer), args)


def test_packed_low_precision_gradchecks_and_route():
    nat, ours = _pair("GRU", 2, 3, bidirectional=True)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    args = (x, *_params(nat))
    packer = _packer(True, [3, 2])
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_native(_call(ours, packer), _call(nat, packer), args, dtype=dtype)
    gradchecks(lambda *a: _call(ours, packer)(*a)[0], args)
    seqs = [torch.randn(n, 2, dtype=torch.float64) for n in (3, 1)]
    with torchbp.manual_backward():  # the native module's packed call is routed too
        out, h = nat(pack_sequence(seqs))
    assert "GRULayerBackward" in grad_fn_names(out.data) and "GRULayerBackward" in grad_fn_names(h)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_packed_dropout_between_layers_matches_native(kind):
    """The packed data between layers gets native's dropout mask (same RNG stream), so train mode matches."""
    nat, ours = _pair(kind, 3, 4, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (nat, ours):
        torch.manual_seed(1)
        out = m(_packer(True)(x))[0].data
        res.append([out, *torch.autograd.grad(out, [x, *m.parameters()], torch.ones_like(out))])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _Unrolled(torch.nn.Module):
    """A cell stepped by hand over a sequence: each step's c' feeds the next, the last one goes unused."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.cell = getattr(torch.nn, kind)(4, 5)

    def forward(self, x):
        state = None
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
        return state[0] if self.kind == "LSTMCell" else state


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_unrolled_cell_audit_ok_with_full_coverage(kind):
    """The audit compares the δ arriving at each output of the cell: torch's LSTM cell computes h' from c', so
    the δ at c' includes the one through h'; the twin's c' is the input of its h' formula too."""
    torch.manual_seed(0)
    model = _Unrolled(kind).double()
    r = torchbp.audit(model, torch.randn(4, 3, 4, dtype=torch.float64))
    assert r.ok and r.coverage == 1.0, str(r)
