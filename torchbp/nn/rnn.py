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
    if isinstance(input, PackedSequence):
        raise RuntimeError(f"torchbp.nn.{name}: PackedSequence input is not supported; "
                           "unswap this module or pad the sequences")
    if getattr(mod, "proj_size", 0) > 0:
        raise RuntimeError(f"torchbp.nn.{name}: proj_size > 0 is not supported; unswap this module")
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(0 if mod.batch_first else 1)
    N = input.shape[0 if mod.batch_first else 1]
    if hx is None:
        z = torch.zeros(mod.num_layers * (2 if mod.bidirectional else 1), N, mod.hidden_size,
                        dtype=input.dtype, device=input.device)
        hx = (z,) * n_states
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


def _finish(mod, out, states, unbatched):
    if unbatched:
        out, states = out.squeeze(0 if mod.batch_first else 1), tuple(s.squeeze(1) for s in states)
    return out, states


class RNN(torch.nn.RNN):
    def forward(self, input, hx=None):
        input, (h0,), unbatched = _prepare(self, input, hx, 1)
        fn = F_rnn.rnn_tanh if self.nonlinearity == "tanh" else F_rnn.rnn_relu
        out, h_n = fn(input, h0, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                      self.bidirectional, self.batch_first)
        out, (h_n,) = _finish(self, out, (h_n,), unbatched)
        return out, h_n


class GRU(torch.nn.GRU):
    def forward(self, input, hx=None):
        input, (h0,), unbatched = _prepare(self, input, hx, 1)
        out, h_n = F_rnn.gru(input, h0, self._flat_weights, self.bias, self.num_layers, self.dropout,
                             self.training, self.bidirectional, self.batch_first)
        out, (h_n,) = _finish(self, out, (h_n,), unbatched)
        return out, h_n


class LSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        input, hx, unbatched = _prepare(self, input, hx, 2)
        out, h_n, c_n = F_rnn.lstm(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                                   self.training, self.bidirectional, self.batch_first)
        return _finish(self, out, (h_n, c_n), unbatched)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.RNN: RNN, torch.nn.GRU: GRU, torch.nn.LSTM: LSTM}
__all__ = ["RNN", "GRU", "LSTM"]
