"""torchbp.functional.rnn, the pieces beside nn.RNN / GRU / LSTM: the cells (RNNCell / GRUCell / LSTMCell and
torch's cell functions), LSTM with proj_size, and PackedSequence input. The audit of unrolled cells, the loss
from one output only and dropout between packed layers: tests/test_cells.py."""
import itertools

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import torchbp
import torchbp.functional.rnn as tbr
import torchbp.nn.rnn as tbn
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, kw_id

DT = torch.float64
HALF = (torch.float32, torch.bfloat16)
UNBATCHED = {"vmap": "an unbatched input: no batch dim to map"}
NO_H0 = {"vmap": "native's module builds its zero state and writes into it in place: vmap refuses"}


def pair(kind, *args, **kw):
    """(native, twin) with the same parameters, float64."""
    torch.manual_seed(0)
    nat = getattr(torch.nn, kind)(*args, **kw).double()
    ours = torchbp.swap(getattr(torch.nn, kind)(*args, **kw).double())
    ours.load_state_dict(nat.state_dict())
    assert type(ours) is getattr(tbn, kind)
    return nat, ours


def call(mod, packed=None):
    """The module as a function of (x, *states, *parameters); packed: x packed by it, the output padded back."""
    names = [n for n, _ in mod.named_parameters()]

    def f(x, *rest):
        n_states = len(rest) - len(names)
        states, params = rest[:n_states], rest[n_states:]
        hx = None if not states else states if n_states == 2 else states[0]
        out = torch.func.functional_call(mod, dict(zip(names, params)), (x if packed is None else packed(x), hx))
        return out if packed is None else (pad_packed_sequence(out[0])[0], out[1])
    f.__name__ = ("δ " if type(mod).__module__.startswith("torchbp") else "") + type(mod).__name__
    return f


def params(mod):
    return tuple(p.detach().clone().requires_grad_() for p in mod.parameters())


def randn(*shape):
    return torch.randn(shape, dtype=DT, requires_grad=True)


CASES = []
# --- the cell modules --------------------------------------------------------------------------------------
CELLS = [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")), ("GRUCell", {}), ("LSTMCell", {}),
         ("RNNCell", dict(bias=False)), ("GRUCell", dict(bias=False)), ("LSTMCell", dict(bias=False))]
for (kind, kw), batched, h0 in itertools.product(CELLS, [True, False], [True, False]):
    nat, ours = pair(kind, 3, 4, **kw)
    n_states = (2 if kind == "LSTMCell" else 1) if h0 else 0

    def args(nat=nat, batched=batched, n_states=n_states):
        lead = (2,) if batched else ()
        return (randn(*lead, 3), *[randn(*lead, 4) for _ in range(n_states)], *params(nat))

    CASES.append(Case(f"cells.{kind}[{kw_id(kw)}]-{'batched' if batched else 'unbatched'}-h0={h0}", call(ours),
                      call(nat), args, checks=SWEEP[FLOAT64] + SWEEP[LOW], low_dtypes=HALF, delta_ran=True,
                      vmap_dims=(0,) * (1 + n_states) + (None,) * len(params(nat)),
                      skip=UNBATCHED if not batched else NO_H0 if not h0 else {}))

# --- torch's cell functions (what the cells call; routed under manual_backward) ----------------------------
for fn in ["rnn_tanh_cell", "rnn_relu_cell", "gru_cell", "lstm_cell"]:
    G = {"gru_cell": 3, "lstm_cell": 4}.get(fn, 1) * 3
    lstm = fn == "lstm_cell"

    def args(G=G, lstm=lstm):  # x, h, (c), W_ih, W_hh, b_ih, b_hh
        return (randn(2, 2), randn(2, 3), *([randn(2, 3)] if lstm else []), randn(G, 2), randn(G, 3), randn(G),
                randn(G))

    if lstm:
        ours = lambda x, h, c, *w: tbr.lstm_cell(x, (h, c), *w)  # noqa: E731
        native = lambda x, h, c, *w: torch.lstm_cell(x, (h, c), *w)  # noqa: E731
    else:
        ours, native = getattr(tbr, fn), getattr(torch, fn)
    assert torchbp.registry.function_for(getattr(torch, fn)) is getattr(tbr, fn)
    CASES.append(Case(f"cells.{fn}-2x2", ours, native, args, checks=SWEEP[FLOAT64] + (GRADCHECK,),
                      skip={"vmap": "torch's cell functions take 2-D inputs only (the modules unsqueeze)"}))

# --- LSTM with proj_size -----------------------------------------------------------------------------------
for num_layers, bidirectional, batch_first, bias, h0 in itertools.product([1, 2], [False, True], [False, True],
                                                                         [True, False], [True, False]):
    nat, ours = pair("LSTM", 3, 5, proj_size=2, num_layers=num_layers, bidirectional=bidirectional,
                     batch_first=batch_first, bias=bias)
    D = 2 if bidirectional else 1

    def args(nat=nat, L=num_layers * D, batch_first=batch_first, h0=h0):
        states = (randn(L, 2, 2), randn(L, 2, 5)) if h0 else ()
        return (randn(2, 4, 3) if batch_first else randn(4, 2, 3), *states, *params(nat))

    n_params = len(params(nat))
    CASES.append(Case(f"cells.LSTM[proj_size=2,num_layers={num_layers},bidirectional={bidirectional},"
                      f"batch_first={batch_first},bias={bias}]-h0={h0}", call(ours), call(nat), args,
                      checks=SWEEP[FLOAT64], delta_ran=True, skip=NO_H0 if not h0 else {},
                      vmap_dims=(0 if batch_first else 1,) + (1,) * (2 if h0 else 0) + (None,) * n_params))
nat, ours = pair("LSTM", 3, 4, proj_size=2, bidirectional=True)
CASES.append(Case("cells.LSTM[proj_size=2,bidirectional=True]-unbatched", call(ours), call(nat),
                  lambda nat=nat: (randn(5, 3), *params(nat)), checks=SWEEP[FLOAT64] + SWEEP[LOW], low_dtypes=HALF,
                  skip={**UNBATCHED, "autocast": "CPU autocast: the δ LSTM(proj_size) gives a bfloat16 c_n, native "
                        "float32"}, delta_ran=True))
for reverse in (False, True):  # T = 3, N = 2, I = 2, H = 3, P = 1
    CASES.append(Case(f"cells.LSTMProjLayer[reverse={reverse}]-3x2x2",
                      lambda *a, reverse=reverse: tbr.LSTMProjLayer.apply(*a, reverse)[:2], None,
                      lambda: tuple(randn(*s) for s in ((3, 2, 2), (2, 1), (2, 3), (12, 2), (12, 1), (12,), (12,),
                                                        (1, 3))), checks=(GRADCHECK,)))

# --- PackedSequence input ----------------------------------------------------------------------------------
LENGTHS = [5, 3, 3, 1]


def packer(enforce_sorted, lengths=LENGTHS):
    return lambda x: pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)


PACKED_SKIP = {"vmap": "pack_padded_sequence takes the batch dim whole (its lengths are per example)"}
KINDS = [("RNN", {}), ("RNN", dict(nonlinearity="relu")), ("GRU", {}), ("LSTM", {}), ("LSTM", dict(proj_size=2))]
for (kind, kw), num_layers, bidirectional, h0, sorted_ in itertools.product(KINDS, [1, 2], [False, True],
                                                                             [True, False], [True, False]):
    nat, ours = pair(kind, 3, 4, num_layers=num_layers, bidirectional=bidirectional, **kw)
    D, H = 2 if bidirectional else 1, kw.get("proj_size", 4)

    def args(nat=nat, L=num_layers * D, H=H, h0=h0, lstm=kind == "LSTM"):
        states = ((randn(L, 4, H),) + ((randn(L, 4, 4),) if lstm else ())) if h0 else ()
        return (randn(5, 4, 3), *states, *params(nat))

    pk = packer(sorted_, LENGTHS if sorted_ else [3, 5, 1, 3])
    CASES.append(Case(f"cells.{kind}[{kw_id(kw)},num_layers={num_layers},bidirectional={bidirectional}]-packed-"
                      f"h0={h0}-sorted={sorted_}", call(ours, pk), call(nat, pk), args, checks=SWEEP[FLOAT64],
                      skip=PACKED_SKIP))
nat, ours = pair("GRU", 2, 3, bidirectional=True)
pk = packer(True, [3, 2])
CASES.append(Case("cells.GRU[bidirectional=True]-packed-3x2x2", call(ours, pk), call(nat, pk),
                  lambda nat=nat: (randn(3, 2, 2), *params(nat)), checks=SWEEP[LOW] + (GRADCHECK,), low_dtypes=HALF))

BAD = [
    Bad("cells.gru_cell-3d-input", tbr.gru_cell, torch.gru_cell,
        lambda: (torch.randn(2, 3, 3), torch.randn(2, 4), torch.randn(12, 3), torch.randn(12, 4)),
        "gru_cell: input must be 1-D"),
    Bad("cells.rnn_tanh_cell-features", tbr.rnn_tanh_cell, torch.rnn_tanh_cell,
        lambda: (torch.randn(2, 5), torch.randn(2, 4), torch.randn(4, 3), torch.randn(4, 4)),
        "rnn_tanh_cell: input has 5 features"),
]
