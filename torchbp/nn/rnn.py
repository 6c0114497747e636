"""Twins of torch.nn's recurrent layers (RNN, GRU, LSTM): same constructor, parameters and state_dict;
forward runs back-propagation through time written out (torchbp.functional.rnn)."""
import torch
from torch.nn.utils.rnn import PackedSequence

from ..functional import rnn as F_rnn


def _prepare(mod, input, hx, n_states):
    """torch's own argument handling for a padded input: (batched input, hx as a tuple, unbatched)."""
    name = type(mod).__bases__[0].__name__
    if hasattr(mod, "_update_flat_weights"):  # parameters reassigned since the last call
        mod._update_flat_weights()
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(0 if mod.batch_first else 1)
    N = input.shape[0 if mod.batch_first else 1]
    if hx is None:
        hx = _zeros(mod, N, n_states, input)
    else:
        hx = tuple(hx) if n_states == 2 else (hx,)
        want = 2 if unbatched else 3
        if any(h.dim() != want for h in hx):
            raise RuntimeError(f"{name}: for {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx "
                               f"should also be {want}-D but got {[h.dim() for h in hx]}-D tensors")
        if unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx)
    mod.check_forward_args(input, hx if n_states == 2 else hx[0], None)
    return input, hx, unbatched


def _zeros(mod, N, n_states, input):
    """torch's initial state: zeros, h P wide under a projection (proj_size > 0), c H wide."""
    shape = (mod.num_layers * (2 if mod.bidirectional else 1), N)
    h = torch.zeros(*shape, getattr(mod, "proj_size", 0) or mod.hidden_size, dtype=input.dtype,
                    device=input.device)
    if n_states == 1:
        return (h,)
    return h, torch.zeros(*shape, mod.hidden_size, dtype=input.dtype, device=input.device)


def _packed(mod, fn, input, hx, n_states):
    """A PackedSequence, as torch's own forward handles it: hx in the packed (sorted) batch order, the data
    and batch_sizes to the entry's packed overload, the results back in the caller's order."""
    if hasattr(mod, "_update_flat_weights"):
        mod._update_flat_weights()
    data, batch_sizes, sorted_indices, unsorted_indices = input
    if hx is None:
        hx = _zeros(mod, int(batch_sizes[0]), n_states, data)
        hx = hx if n_states == 2 else hx[0]
    else:
        hx = mod.permute_hidden(hx, sorted_indices)
    mod.check_forward_args(data, hx, batch_sizes)
    out, *states = fn(data, batch_sizes, hx, mod._flat_weights, mod.bias, mod.num_layers, mod.dropout,
                      mod.training, mod.bidirectional)
    hidden = mod.permute_hidden(tuple(states) if n_states == 2 else states[0], unsorted_indices)
    return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), hidden


def _finish(mod, out, states, unbatched):
    if unbatched:
        out, states = out.squeeze(0 if mod.batch_first else 1), tuple(s.squeeze(1) for s in states)
    return out, states


class RNN(torch.nn.RNN):
    def forward(self, input, hx=None):
        fn = F_rnn.rnn_tanh if self.nonlinearity == "tanh" else F_rnn.rnn_relu
        if isinstance(input, PackedSequence):
            return _packed(self, fn, input, hx, 1)
        input, (h0,), unbatched = _prepare(self, input, hx, 1)
        out, h_n = fn(input, h0, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                      self.bidirectional, self.batch_first)
        out, (h_n,) = _finish(self, out, (h_n,), unbatched)
        return out, h_n


class GRU(torch.nn.GRU):
    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            return _packed(self, F_rnn.gru, input, hx, 1)
        input, (h0,), unbatched = _prepare(self, input, hx, 1)
        out, h_n = F_rnn.gru(input, h0, self._flat_weights, self.bias, self.num_layers, self.dropout,
                             self.training, self.bidirectional, self.batch_first)
        out, (h_n,) = _finish(self, out, (h_n,), unbatched)
        return out, h_n


class LSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            return _packed(self, F_rnn.lstm, input, hx, 2)
        input, hx, unbatched = _prepare(self, input, hx, 2)
        out, h_n, c_n = F_rnn.lstm(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                                   self.training, self.bidirectional, self.batch_first)
        return _finish(self, out, (h_n, c_n), unbatched)


# --- cells: torch's own argument handling (unbatched input, hx=None), then one δ step ---------------------

def _cell_args(mod, input, hx, n_states):
    name = type(mod).__bases__[0].__name__
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    states = None if hx is None else (tuple(hx) if n_states == 2 else (hx,))
    if states is not None and any(h.dim() not in (1, 2) for h in states):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {[h.dim() for h in states]}D instead")
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if states is None:
        states = (torch.zeros(input.shape[0], mod.hidden_size, dtype=input.dtype, device=input.device),) * n_states
    elif not batched:
        states = tuple(h.unsqueeze(0) for h in states)
    return input, states, batched


class RNNCell(torch.nn.RNNCell):
    def forward(self, input, hx=None):
        input, (h,), batched = _cell_args(self, input, hx, 1)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        fn = F_rnn.rnn_tanh_cell if self.nonlinearity == "tanh" else F_rnn.rnn_relu_cell
        h = fn(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)


class GRUCell(torch.nn.GRUCell):
    def forward(self, input, hx=None):
        input, (h,), batched = _cell_args(self, input, hx, 1)
        h = F_rnn.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)


class LSTMCell(torch.nn.LSTMCell):
    def forward(self, input, hx=None):
        input, hc, batched = _cell_args(self, input, hx, 2)
        h, c = F_rnn.lstm_cell(input, hc, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.RNN: RNN, torch.nn.GRU: GRU, torch.nn.LSTM: LSTM, torch.nn.RNNCell: RNNCell,
         torch.nn.GRUCell: GRUCell, torch.nn.LSTMCell: LSTMCell}
__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]
