"""δ recurrent layers (BPTT written out) beyond the common matrix (tests/cases/rnn.py drives float64 over every
option, gradchecks, low precision, autocast, the routed native modules and the refusals against native
nn.RNN / GRU / LSTM): one output only, single steps, functional entries, dropout between layers, twins, the
audit, vmap (which native refuses: against a loop of native), half-precision ReLU kinks."""
import pytest
import torch

import torchbp
import torchbp.functional.rnn as tbr
import torchbp.nn.rnn as tbn
from cases.rnn import CELLS, args_for, call, make
from util import assert_matches_native


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("use", ["h_n", "c_n", "output"])
def test_loss_from_one_output_only(cell, use):
    """Only some outputs reach the loss: the δ of the others is None (not materialised zeros) in backward."""
    if use == "c_n" and cell != "LSTM":
        pytest.skip("only LSTM has a cell state")
    nat, ours = make(cell, num_layers=2)
    grads, base = [], args_for(cell, nat)
    for mod in (nat, ours):
        args = tuple(a.detach().clone().requires_grad_() for a in base)
        out, hx = call(mod)(*args)
        pick = {"output": out, "h_n": hx[0] if cell == "LSTM" else hx, "c_n": hx[1] if cell == "LSTM" else None}[use]
        grads.append(torch.autograd.grad(pick.square().sum(), args))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_single_step_noncontiguous_and_no_input_grad(cell):
    nat, ours = make(cell, batch_first=True)
    x = torch.randn(3, 2, 1, dtype=torch.float64).transpose(0, 2)  # (1, 2, 3) batch_first, non-contiguous
    params = tuple(p.detach().clone().requires_grad_() for p in nat.parameters())
    assert_matches_native(call(ours), call(nat), (x, *params))


def test_functional_entries_match_torch():
    nat, _ = make("GRU", num_layers=2)
    x, h0 = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    args = (x, h0, nat._flat_weights, True, 2, 0.0, False, False, False)
    for a, b in zip(tbr.gru(*args), torch.gru(*args)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_matches_native(cell):
    """torchbp's dropout draws the masks native's RNN draws (same RNG stream), so train mode matches too."""
    nat, ours = make(cell, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (nat, ours):
        torch.manual_seed(1)
        out = m(x)[0]
        res.append([out, *torch.autograd.grad(out, [x, *m.parameters()], torch.ones_like(out))])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_twin_swapped_and_audit_coverage():
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.lstm = torch.nn.LSTM(6, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, tokens):
            out, _ = self.lstm(self.emb(tokens))
            return self.head(out[:, -1])

    torch.manual_seed(0)
    model = Tagger().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 10, (4, 7))
    with torchbp.swapped(model):
        assert type(model.lstm) is tbn.LSTM and isinstance(model.lstm, torch.nn.LSTM)
        assert list(model.state_dict()) == list(state)
    r = torchbp.audit(model, tokens)
    assert r.ok and r.coverage == 1.0, str(r)
    assert type(model.lstm) is torch.nn.LSTM


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_per_example_grads_under_vmap(cell):
    """torch.func.vmap(grad) over unbatched sequences (native's RNN refuses vmap): equals a loop of native."""
    from torch.func import functional_call, grad, vmap
    nat, ours = make(cell)
    p = {k: v.detach() for k, v in nat.named_parameters()}
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    got = vmap(grad(lambda p, xi: functional_call(ours, p, (xi,))[0].sin().sum()), (None, 0))(p, x)
    for i in range(4):
        want = torch.autograd.grad(nat(x[i])[0].sin().sum(), list(nat.parameters()))
        for k, w in zip(p, want):
            torch.testing.assert_close(got[k][i], w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_relu_rnn_half_precision_kinks_switch_as_native(seed):
    """A ReLU unit within rounding of 0 switches on how z_t was rounded: the δ forward rounds z_t as native
    does, so in bfloat16 it switches with native's and the low-precision rule holds on every input."""
    nat, ours = make("RNN_relu", I=8, H=16, num_layers=2, bidirectional=True)
    torch.manual_seed(seed)
    x = torch.randn(5, 3, 8, requires_grad=True)
    assert_matches_native(call(ours), call(nat), (x, *[p.detach().requires_grad_() for p in ours.parameters()]),
                          dtype=torch.bfloat16)
