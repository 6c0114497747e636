"""torchbp.functional.rnn: RNN (tanh, relu), GRU and LSTM, BPTT written out, against native nn.RNN / GRU / LSTM."""
import itertools

import torch

import torchbp.functional.rnn as tbr
import torchbp.nn.rnn as tbn
from cases import AUTOCAST, FLOAT64, GRADCHECK, LOW, SWEEP, VMAP, Bad, Case

CELLS = ["RNN", "RNN_relu", "GRU", "LSTM"]


def make(cell, I=3, H=4, **kw):
    """(native module, twin) with the same parameters, float64."""
    kind, extra = (cell.split("_") + [None])[:2]
    if extra == "relu":
        kw["nonlinearity"] = "relu"
    torch.manual_seed(0)
    nat = getattr(torch.nn, kind)(I, H, **kw).double()
    ours = getattr(tbn, kind)(I, H, **kw).double()
    ours.load_state_dict(nat.state_dict())
    return nat, ours


def call(mod):
    """The module as a function of (x, *states, *parameters): what assert_matches_native compares."""
    names = [n for n, _ in mod.named_parameters()]

    def f(x, *rest):
        n_states = len(rest) - len(names)
        states, params = rest[:n_states], rest[n_states:]
        hx = None if not states else states if n_states == 2 else states[0]
        out = torch.func.functional_call(mod, dict(zip(names, params)), (x, hx))
        return out
    return f


def args_for(cell, mod, *, T=5, N=2, batch_first=False, unbatched=False, h0=True):
    D = 2 if mod.bidirectional else 1
    I, H = mod.input_size, mod.hidden_size
    x = torch.randn((T, I) if unbatched else (N, T, I) if batch_first else (T, N, I), dtype=torch.float64,
                    requires_grad=True)
    states = ()
    if h0:
        shape = (mod.num_layers * D, H) if unbatched else (mod.num_layers * D, N, H)
        states = tuple(torch.randn(shape, dtype=torch.float64, requires_grad=True)
                       for _ in range(2 if cell == "LSTM" else 1))
    params = tuple(p.detach().clone().requires_grad_() for p in mod.parameters())
    return (x, *states, *params)


def flat(f):
    """(output, h_n) or (output, (h_n, c_n)) as one flat tuple, for gradcheck."""
    return lambda *a: (lambda o, s: (o, *s) if isinstance(s, tuple) else (o, s))(*f(*a))


NO_VMAP = {VMAP: "native's RNN refuses vmap (tests/test_rnn.py holds ours under vmap against a loop of native)"}


def _autocast_skip(cell):
    """oneDNN has no bfloat16 LSTM primitive for some CPUs (AVX2 only): AUTOCAST is skipped there."""
    kind = cell.split("_")[0]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            getattr(torch.nn, kind)(2, 2)(torch.randn(2, 1, 2))
    except RuntimeError as exc:
        if "could not create a primitive" in str(exc):
            return {AUTOCAST: f"native {kind} cannot run under bfloat16 autocast on this CPU"}
        raise
    return {}


CASES = []
for cell in CELLS:
    for num_layers, bidirectional, batch_first, bias, h0 in itertools.product([1, 2], [False, True], [False, True],
                                                                             [True, False], [True, False]):
        kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
        nat, ours = make(cell, **kw)
        CASES.append(Case(f"rnn.{cell}-layers{num_layers}-bi{bidirectional}-bf{batch_first}-bias{bias}-h0{h0}",
                          call(ours), call(nat), lambda cell=cell, nat=nat, bf=batch_first, h0=h0: args_for(
                              cell, nat, batch_first=bf, h0=h0), checks=SWEEP[FLOAT64], skip=NO_VMAP,
                          devices=("cpu",)))
    for bidirectional in (False, True):
        for h0 in (True, False):
            nat, ours = make(cell, num_layers=2, bidirectional=bidirectional)
            CASES.append(Case(f"rnn.{cell}-unbatched-layers2-bi{bidirectional}-h0{h0}", call(ours), call(nat),
                              lambda cell=cell, nat=nat, h0=h0: args_for(cell, nat, unbatched=True, h0=h0),
                              checks=SWEEP[FLOAT64], skip=NO_VMAP, devices=("cpu",)))
        nat, ours = make(cell, I=2, H=2, num_layers=2, bidirectional=bidirectional)
        CASES.append(Case(f"rnn.{cell}-I2-H2-layers2-bi{bidirectional}-T3", flat(call(ours)), None,
                          lambda cell=cell, nat=nat: args_for(cell, nat, T=3, N=2), checks=(GRADCHECK,)))
    nat, ours = make(cell, I=8, H=16, num_layers=2, bidirectional=True)

    def low_args(cell=cell):
        nat, _ = make(cell, I=8, H=16, num_layers=2, bidirectional=True)  # (seeds: the inputs drawn after it)
        x = torch.randn(6, 4, 8, requires_grad=True)
        states = tuple(torch.randn(4, 4, 16, requires_grad=True) for _ in range(2 if cell == "LSTM" else 1))
        return (x, *states, *(p.detach().float().requires_grad_() for p in nat.parameters()))
    CASES.append(Case(f"rnn.{cell}-I8-H16-layers2-bi", call(ours), call(nat), low_args, checks=SWEEP[LOW],
                      skip=_autocast_skip(cell)))
nat, ours = make("LSTM", num_layers=2, bidirectional=True)
CASES.append(Case("rnn.LSTM-layers2-bi", call(ours), call(nat), lambda nat=nat: args_for("LSTM", nat),
                  checks=SWEEP[FLOAT64], skip=NO_VMAP))


# --- bad inputs: refused by native too; the functional entries name the op, the modules keep torch's checks -----
def _packed():
    from torch.nn.utils.rnn import pack_padded_sequence
    return pack_padded_sequence(torch.randn(5, 2, 3, dtype=torch.float64), [5, 3])


BAD = []
for cell in ["RNN", "GRU", "LSTM"]:
    nat, ours = make(cell)
    name = cell.lower().replace("rnn", "rnn_tanh")
    BAD += [
        Bad(f"rnn.{name}-packed", getattr(tbr, name), getattr(torch, name),
            lambda cell=cell, nat=nat: (_packed(), (torch.zeros(1, 2, 4, dtype=torch.float64),) * 2 if cell == "LSTM"
                                        else torch.zeros(1, 2, 4, dtype=torch.float64), nat._flat_weights, True, 1,
                                        0.0, False, False, False),
            f"torchbp.functional.{name}: a PackedSequence goes in as its data"),
        Bad(f"rnn.{cell}-4d", ours, nat, lambda: (torch.randn(1, 5, 2, 3, dtype=torch.float64),),
            "Expected input to be 2D or 3D", why="the module's own check"),
    ]
nat, ours = make("GRU")
BAD.append(Bad("rnn.GRU-hidden-shape", ours, nat,
               lambda: (torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)),
               "Expected hidden size", why="torch's own check"))
