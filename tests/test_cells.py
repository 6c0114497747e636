"""δ recurrent cells, LSTM with proj_size and PackedSequence input: the loss from one output only, dropout
between packed layers, the audit of unrolled cells (values, gradients, gradchecks, low precision, twins, routes
and refusals: tests/cases/cells.py)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import torchbp
from cases.cells import pair


def _call(mod):
    """The module as a function of (x, *states, *parameters)."""
    names = [n for n, _ in mod.named_parameters()]

    def f(x, *rest):
        n_states = len(rest) - len(names)
        states, params = rest[:n_states], rest[n_states:]
        hx = None if not states else states if n_states == 2 else states[0]
        return torch.func.functional_call(mod, dict(zip(names, params)), (x, hx))
    return f


def _params(mod):
    return tuple(p.detach().clone().requires_grad_() for p in mod.parameters())


# --- LSTM with proj_size ---------------------------------------------------------------------------------

def test_lstm_proj_loss_from_one_output_only():
    nat, ours = pair("LSTM", 3, 4, proj_size=2, num_layers=2)
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


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_packed_dropout_between_layers_matches_native(kind):
    """The packed data between layers gets native's dropout mask (same RNG stream), so train mode matches."""
    nat, ours = pair(kind, 3, 4, num_layers=3, dropout=0.5, bidirectional=True)
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
