"""Recurrent layers (Elman RNN, GRU, LSTM): back-propagation through time written out.

One δ Function per cell type runs one layer in one direction over the whole sequence; the entries
``rnn_tanh``, ``rnn_relu``, ``gru`` and ``lstm`` (torch.rnn_tanh / torch.gru / torch.lstm's signatures, which
torch.nn.RNN / GRU / LSTM call) stack layers and directions around them. Layout everywhere inside: time first,
x (T, N, I), h (N, H); weights exactly torch's (W_ih = [W_ii|W_if|W_ig|W_io] for LSTM, [W_ir|W_iz|W_in] for GRU).

Shared by the three backwards, with δz_t = ∂J/∂z_t at a step's pre-activations (what the derivation's δ is for a layer):
  δ_{h_t} = ∂J/∂out_t + W_hhᵀ δz_{t+1}      (the output's δ plus the one carried back from step t+1)
  ∂J/∂W_ih = Σ_t δz_t x_tᵀ,   ∂J/∂W_hh = Σ_t δz_t h_{t−1}ᵀ,   ∂J/∂b = Σ_t δz_t,   δ_{x_t} = W_ihᵀ δz_t
The input projection W_ih x_t is one matmul over all t in forward, and δ_x, ∂J/∂W_ih one matmul each in
backward; only the recurrence is a Python loop over time.
"""
from __future__ import annotations

import torch

from . import activation as A
from .linear import linear
from .pointwise import add, mul, sub
from ._common import FP32, LOWER, DeltaFunction, _autocast_state, apply, check, check_compatible, check_tensor, fail, \
    inplace_ok, scale_


def _order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _proj(x, W, b):
    """W x_t + b for every t as one matmul: (T, N, I) -> (T, N, G)."""
    T, N, _ = x.shape
    x2 = x.reshape(T * N, x.shape[2])  # sizes spelled out: -1 is ambiguous for an empty batch
    z = x2 @ W.t() if b is None else torch.addmm(b, x2, W.t())
    return z.reshape(T, N, W.shape[0])


def _stack(items, reverse):
    return torch.stack(items[::-1] if reverse else items)


def _prev(states, first, reverse):
    """The state each step starts from, for every t at once: (first, s_0, …, s_{T−2}) in time order,
    (s_1, …, s_{T−1}, first) for a reversed direction."""
    first = first.unsqueeze(0)
    return torch.cat([states[1:], first] if reverse else [first, states[:-1]])


def _bptt(d_out, dz_h_of, W_hh, carry_of, h0, T, reverse):
    """The loop every cell's backward shares, backward in time: δ_{h_t} = ∂J/∂out_t + what step t+1 sent
    back; step t sends back W_hhᵀ ``dz_h_of(t, δ_{h_t})`` (its δ at W_hh h + b_hh), plus ``carry_of(t, δ_{h_t})``
    where h_{t−1} also enters h_t directly (GRU). The caller computes every factor that does not depend on
    the δ's for all t at once, so a step is a handful of ops (a GPU step is launch-bound), and then builds the
    δz's from the returned δ_h's for all t at once too: one pass, instead of a list of per-step pieces and a
    stacked copy of them. Returns the δ_{h_t} stacked in time order and δ_{h0}.
    (d_out None: only LSTM's c_n reached the loss.)"""
    order = list(_order(T, not reverse))
    dh, dhs = torch.zeros_like(h0) if d_out is None else d_out[order[0]], []
    for k, t in enumerate(order):
        dhs.append(dh)
        dz_h = dz_h_of(t, dh)
        carry = carry_of(t, dh) if carry_of is not None else None
        nxt = order[k + 1] if k + 1 < T else None
        base = carry if nxt is None or d_out is None else d_out[nxt] if carry is None else d_out[nxt] + carry
        dh = dz_h @ W_hh if base is None else torch.addmm(base, dz_h, W_hh)
    return _stack(dhs, not reverse), dh


def _grads_w(ctx, dz_in, dz_h, x, h0, out, W_ih, reverse, i_w):
    """What every cell shares: δ_x, ∂J/∂W_ih, ∂J/∂W_hh, ∂J/∂b_ih, ∂J/∂b_hh from the stacked δz's.
    dz_in: δ at W_ih x_t + b_ih (T, N, G); dz_h: δ at W_hh h_{t−1} + b_hh (the same tensor, or for GRU a
    function making it from dz_in, called once dz_in's own sums are done).
    x is input 0 of the Function, W_ih, W_hh, b_ih, b_hh inputs i_w .. i_w + 3."""
    need_x, (need_wih, need_whh, need_bih, need_bhh) = ctx.needs_input_grad[0], ctx.needs_input_grad[i_w:i_w + 4]
    T, N, G = dz_in.shape
    dzi = dz_in.reshape(T * N, G)
    dx = (dzi @ W_ih).reshape(T, N, W_ih.shape[1]) if need_x else None
    dW_ih = dzi.t() @ x.reshape(T * N, x.shape[2]) if need_wih else None
    db_ih = dzi.sum(0) if need_bih else None
    same = dz_h is dz_in
    if callable(dz_h):  # GRU: made from dz_in now that dz_in is used (possibly in dz_in's buffer)
        dz_h = dz_h() if need_whh or need_bhh else None
    dW_hh = None
    if need_whh:  # h_{t−1} is out[t−1] (out[t+1] reversed), h0 at the first step: no copy of the states
        first, rest_z, rest_h = (T - 1, dz_h[:-1], out[1:]) if reverse else (0, dz_h[1:], out[:-1])
        dW_hh = dz_h[first].t() @ h0
        if T > 1:
            dW_hh = torch.addmm(dW_hh, rest_z.reshape(-1, G).t(), rest_h.reshape(-1, rest_h.shape[-1]))
    db_hh = None
    if need_bhh:
        db_hh = db_ih if same and db_ih is not None else dz_h.reshape(T * N, G).sum(0)
    return dx, dW_ih, dW_hh, db_ih, db_hh


# --- Elman RNN --------------------------------------------------------------------------------------------

def _rnn_steps(x, h0, W_ih, W_hh, b_ih, b_hh, relu, reverse):
    # z_t rounded as native rounds it, (W_ih x_t + b_ih) + (W_hh h + b_hh): in half precision a ReLU unit
    # within rounding of 0 then switches as native's does, not on a coin toss that changes its δ
    z_x, h, outs = _proj(x, W_ih, b_ih), h0, []
    W_hh_t = W_hh.t()
    for t in _order(x.shape[0], reverse):
        z = (h @ W_hh_t if b_hh is None else torch.addmm(b_hh, h, W_hh_t)) + z_x[t]
        h = torch.relu(z) if relu else torch.tanh(z)
        outs.append(h)
    return _stack(outs, reverse)


class RNNLayer(DeltaFunction):
    """One layer, one direction of nn.RNN:  h_t = f(z_t),  z_t = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh,
    f = tanh or relu.

    backward (BPTT), from t = T down to 1:  δz_t = (∂J/∂h_t + W_hhᵀ δz_{t+1}) ⊙ f'(z_t), with f' from the
    saved output: 1 − h_t² (tanh), [h_t > 0] (relu); δ_{h0} = W_hhᵀ δz_1; the weight sums in the module doc.
    Saves x, h0 and the output (native saves as much).
    """

    @staticmethod
    def forward(x, h0, W_ih, W_hh, b_ih, b_hh, relu, reverse):
        return _rnn_steps(x, h0, W_ih, W_hh, b_ih, b_hh, relu, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, W_ih, W_hh, b_ih, b_hh, ctx.relu, ctx.reverse = inputs
        ctx.save_for_backward(x, h0, W_ih, W_hh, b_ih, b_hh, output)

    @staticmethod
    def backward(ctx, d_out):
        x, h0, W_ih, W_hh, b_ih, b_hh, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the states as a function of the inputs
            out = _rnn_steps(x, h0, W_ih, W_hh, b_ih, b_hh, ctx.relu, ctx.reverse)
        fp = (A.ReLU if ctx.relu else A.Tanh).delta(out.new_ones(()).expand_as(out), out)  # f'(z_t), every t
        dhs, dh = _bptt(d_out, lambda t, dh: dh * fp[t], W_hh, None, h0, x.shape[0], ctx.reverse)
        dz = scale_(fp, dhs)  # δz_t = δ_{h_t} ⊙ f'(z_t), every t
        dx, dW_ih, dW_hh, db_ih, db_hh = _grads_w(ctx, dz, dz, x, h0, out, W_ih, ctx.reverse, 2)
        return dx, dh if ctx.needs_input_grad[1] else None, dW_ih, dW_hh, db_ih, db_hh, None, None


# --- GRU --------------------------------------------------------------------------------------------------

def _buffers(x, h0, widths):
    """(T, N, width) buffers the Function's forward writes each step's results into (out=), so they are not
    held twice (a list of steps and its stacked copy) at the end of forward; None where ops are recorded
    (the create_graph replay) or batched (vmap): there the steps are collected and stacked."""
    if not inplace_ok():
        return None
    return [x.new_empty(x.shape[0], *h0.shape[:-1], w) for w in widths]


def _step_outs(bufs, t, n):
    """Step t's slices of the buffers (the ops' ``out=``), or n Nones."""
    return (None,) * n if bufs is None else [b[t] for b in bufs]


def _gru_steps(x, h0, W_ih, W_hh, b_ih, b_hh, reverse):
    H = h0.shape[-1]
    a_x, h, outs, saves = _proj(x, W_ih, b_ih), h0, [], []
    bufs = _buffers(x, h0, (H, 4 * H))
    for t in _order(x.shape[0], reverse):
        a_h = h @ W_hh.t() if b_hh is None else torch.addmm(b_hh, h, W_hh.t())
        rz = torch.sigmoid(a_x[t, :, :2 * H] + a_h[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        hn = a_h[:, 2 * H:]
        n = torch.tanh(a_x[t, :, 2 * H:] + r * hn)
        o_t, w_t = _step_outs(bufs, t, 2)
        h = torch.add(n, z * (h - n), out=o_t)  # (1 − z) n + z h
        w = torch.cat([rz, n, hn], 1, out=w_t)
        if bufs is None:
            outs.append(h), saves.append(w)
    return tuple(bufs) if bufs is not None else (_stack(outs, reverse), _stack(saves, reverse))


def _gru_hid(d, r):
    """GRU's δ at W_hh h + b_hh from its δ at W_ih x + b_ih, d = [δa_r | δa_z | δa_n] (…, 3, H): n's part is
    δa_n ⊙ r there (the rest is shared). In d's own buffer where that is safe (a first-order backward)."""
    if inplace_ok():
        d[..., 2, :].mul_(r)
        return d
    return torch.cat([d[..., :2, :], (d[..., 2, :] * r).unsqueeze(-2)], -2)


class GRULayer(DeltaFunction):
    """One layer, one direction of nn.GRU (torch's exact formula):
      r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz),
      n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h.

    backward (BPTT), with δ_h = ∂J/∂h' (output's δ plus the one carried from the next step):
      δa_n = δ_h ⊙ (1 − z) ⊙ (1 − n²)                   (δ at n's pre-activation)
      δa_z = δ_h ⊙ (h − n) ⊙ z(1 − z),  δa_r = δa_n ⊙ (W_hn h + b_hn) ⊙ r(1 − r)
      δ at W_ih x + b_ih: [δa_r | δa_z | δa_n];  δ at W_hh h + b_hh: [δa_r | δa_z | δa_n ⊙ r]
      δ_{h, previous step} = δ_h ⊙ z + W_hhᵀ [δa_r | δa_z | δa_n ⊙ r]
    Saves per step r, z, n and W_hn h + b_hn (4H, as native's fused GRU workspace), plus x, h0, output.
    """

    @staticmethod
    def forward(x, h0, W_ih, W_hh, b_ih, b_hh, reverse):
        return _gru_steps(x, h0, W_ih, W_hh, b_ih, b_hh, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, W_ih, W_hh, b_ih, b_hh, ctx.reverse = inputs
        out, ws = output
        ctx.mark_non_differentiable(ws)
        ctx.set_materialize_grads(False)  # no (T, N, 4H) zeros for the workspace's δ, which is never used
        ctx.save_for_backward(x, h0, W_ih, W_hh, b_ih, b_hh, out, ws)

    @staticmethod
    def backward(ctx, d_out, _):
        x, h0, W_ih, W_hh, b_ih, b_hh, out, ws = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the gates as a function of the inputs
            out, ws = _gru_steps(x, h0, W_ih, W_hh, b_ih, b_hh, ctx.reverse)
        T, H = x.shape[0], h0.shape[-1]
        r, z, n, hn = ws.chunk(4, 2)
        # δ_h's factors for every t at once (the gates' f' are the activations' own δ):
        #   δa_n = δ_h ⊙ k_n,  k_n = (1 − z)(1 − n²);   δa_z = δ_h ⊙ (h_{t−1} − n) z(1 − z);   δa_r = δ_h ⊙ k_n hn r(1 − r)
        k_n = A.Tanh.delta(1 - z, n)
        k = torch.cat([A.Sigmoid.delta(k_n * hn, r), A.Sigmoid.delta(_prev(out, h0, ctx.reverse) - n, z), k_n], 2)
        k = k.view(T, x.shape[1], 3, H)
        dhs, dh = _bptt(d_out, lambda t, dh: _gru_hid(k[t] * dh.unsqueeze(-2), r[t]).flatten(-2), W_hh,
                        lambda t, dh: dh * z[t], h0, T, ctx.reverse)
        dz_in = scale_(k, dhs.unsqueeze(-2))  # k's buffer when safe
        dx, dW_ih, dW_hh, db_ih, db_hh = _grads_w(ctx, dz_in.flatten(-2), lambda: _gru_hid(dz_in, r).flatten(-2),
                                                  x, h0, out, W_ih, ctx.reverse, 2)
        return dx, dh if ctx.needs_input_grad[1] else None, dW_ih, dW_hh, db_ih, db_hh, None


# --- LSTM -------------------------------------------------------------------------------------------------

def _lstm_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, reverse):
    H = h0.shape[-1]
    b = b_ih + b_hh if b_ih is not None else None
    z_x, h, c, outs, cs, gs = _proj(x, W_ih, b), h0, c0, [], [], []
    bufs = _buffers(x, h0, (H, H, 4 * H))
    for t in _order(x.shape[0], reverse):
        z = torch.addmm(z_x[t], h, W_hh.t())
        s = torch.sigmoid(z)  # all four blocks in one op (a step is launch-bound on a GPU); g's is replaced
        o_t, c_t, g_t = _step_outs(bufs, t, 3)
        g = torch.cat([s[:, :2 * H], torch.tanh(z[:, 2 * H:3 * H]), s[:, 3 * H:]], 1, out=g_t)
        i, f, gg, o = g.chunk(4, 1)
        c = torch.addcmul(f * c, i, gg, out=c_t)  # f ⊙ c + i ⊙ g
        h = torch.mul(o, torch.tanh(c), out=o_t)
        if bufs is None:
            outs.append(h), cs.append(c), gs.append(g)
    return tuple(bufs) if bufs is not None else (_stack(outs, reverse), _stack(cs, reverse), _stack(gs, reverse))


class LSTMLayer(DeltaFunction):
    """One layer, one direction of nn.LSTM: [i|f|g|o] = [σ|σ|tanh|σ](W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),
      c_t = f ⊙ c_{t−1} + i ⊙ g,   h_t = o ⊙ tanh(c_t).

    backward (BPTT), from the last step down, with δ_h = ∂J/∂h_t + W_hhᵀ δz_{t+1} and δ_c carried from t+1
    (δ_c = ∂J/∂c_T at the last step):
      δ_c ← δ_c + δ_h ⊙ o ⊙ (1 − tanh² c_t)
      δz_t = [δ_c ⊙ g ⊙ i(1−i) | δ_c ⊙ c_{t−1} ⊙ f(1−f) | δ_c ⊙ i ⊙ (1−g²) | δ_h ⊙ tanh c_t ⊙ o(1−o)]
      δ_{c_{t−1}} = δ_c ⊙ f,   δ_{h_{t−1}} = W_hhᵀ δz_t   (+ the output's δ at step t−1)
    Saves the gates (4H) and cell states (H) per step, plus x, h0, c0 and the output.
    Returns (output (T, N, H), c_T).
    """

    @staticmethod
    def forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, reverse):
        out, cs, gs = _lstm_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, reverse)
        return out, cs[0 if reverse else -1].clone(), cs, gs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, W_ih, W_hh, b_ih, b_hh, ctx.reverse = inputs
        out, c_n, cs, gs = output
        ctx.mark_non_differentiable(cs, gs)
        ctx.set_materialize_grads(False)  # no (T, N, 5H) zeros for cs, gs, whose δ is never used
        ctx.save_for_backward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, out, cs, gs)

    @staticmethod
    def backward(ctx, d_out, d_cn, _cs, _gs):
        x, h0, c0, W_ih, W_hh, b_ih, b_hh, out, cs, gs = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the gates and cells as functions of the inputs
            out, cs, gs = _lstm_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ctx.reverse)
        T, H = x.shape[0], h0.shape[-1]
        i, f, g, o = gs.chunk(4, 2)
        tc = torch.tanh(cs)
        # the δ's factors for every t at once (the gates' f' are the activations' own δ):
        #   δc_t += δh_t ⊙ k_c,  k_c = o(1 − tc²);   δz_t = [δc_t ⊙ k_i | δc_t ⊙ k_f | δc_t ⊙ k_g | δh_t ⊙ k_o]
        #   k_i = g i(1 − i),  k_f = c_{t−1} f(1 − f),  k_g = i(1 − g²),  k_o = tc o(1 − o)
        k_c = A.Tanh.delta(o, tc)
        k = torch.cat([A.Sigmoid.delta(g, i), A.Sigmoid.delta(_prev(cs, c0, ctx.reverse), f), A.Tanh.delta(i, g),
                       A.Sigmoid.delta(tc, o)], 2).view(T, x.shape[1], 4, H)
        dc, dcs = d_cn, []  # δ_c carried back from step t+1 (δc_T = ∂J/∂c_T; None when c_n was not used)

        def dz_h_of(t, dh):
            nonlocal dc
            dct = dh * k_c[t] if dc is None else torch.addcmul(dc, dh, k_c[t])
            dcs.append(dct)
            dc = dct * f[t]
            return (k[t] * torch.stack([dct, dct, dct, dh], -2)).flatten(-2)
        dhs, dh = _bptt(d_out, dz_h_of, W_hh, None, h0, T, ctx.reverse)
        dcs = _stack(dcs, not ctx.reverse).unsqueeze(-2)
        dz = scale_(k, torch.cat([dcs.expand(-1, -1, 3, -1), dhs.unsqueeze(-2)], -2)).flatten(-2)
        dx, dW_ih, dW_hh, db_ih, db_hh = _grads_w(ctx, dz, dz, x, h0, out, W_ih, ctx.reverse, 3)
        need = ctx.needs_input_grad
        return dx, dh if need[1] else None, dc if need[2] else None, dW_ih, dW_hh, db_ih, db_hh, None


# --- LSTM with a projection (proj_size > 0) ----------------------------------------------------------------

def _lstmp_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, reverse):
    H = c0.shape[-1]
    b = b_ih + b_hh if b_ih is not None else None
    z_x, h, c, outs, cs, gs = _proj(x, W_ih, b), h0, c0, [], [], []
    for t in _order(x.shape[0], reverse):
        z = torch.addmm(z_x[t], h, W_hh.t())
        s = torch.sigmoid(z)
        g = torch.cat([s[:, :2 * H], torch.tanh(z[:, 2 * H:3 * H]), s[:, 3 * H:]], 1)
        i, f, gg, o = g.chunk(4, 1)
        c = torch.addcmul(f * c, i, gg)
        h = (o * torch.tanh(c)) @ W_hr.t()
        outs.append(h), cs.append(c), gs.append(g)
    return _stack(outs, reverse), _stack(cs, reverse), _stack(gs, reverse)


class LSTMProjLayer(DeltaFunction):
    """One layer, one direction of nn.LSTM(proj_size=P): the LSTM cell of LSTMLayer, whose output is projected,
      [i|f|g|o] = [σ|σ|tanh|σ](W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),  c_t = f ⊙ c_{t−1} + i ⊙ g,
      m_t = o ⊙ tanh(c_t),  h_t = W_hr m_t   (h: P wide, c and m: H wide, W_hh: 4H × P).

    backward (BPTT), from the last step down, δ_h = ∂J/∂h_t + W_hhᵀ δz_{t+1}:
      δ_m = W_hrᵀ δ_h,   δ_c ← δ_c + δ_m ⊙ o ⊙ (1 − tanh² c_t)
      δz_t = [δ_c ⊙ g ⊙ i(1−i) | δ_c ⊙ c_{t−1} ⊙ f(1−f) | δ_c ⊙ i ⊙ (1−g²) | δ_m ⊙ tanh c_t ⊙ o(1−o)]
      δ_{c_{t−1}} = δ_c ⊙ f,   ∂J/∂W_hr = Σ_t δ_h,t m_tᵀ,   the other weight sums as in the module doc.
    Returns (output (T, N, P), c_T).
    """

    @staticmethod
    def forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, reverse):
        out, cs, gs = _lstmp_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, reverse)
        return out, cs[0 if reverse else -1].clone(), cs, gs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, ctx.reverse = inputs
        out, c_n, cs, gs = output
        ctx.mark_non_differentiable(cs, gs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, out, cs, gs)

    @staticmethod
    def backward(ctx, d_out, d_cn, _cs, _gs):
        x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, out, cs, gs = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the gates and cells as functions of the inputs
            out, cs, gs = _lstmp_steps(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, ctx.reverse)
        T, H = x.shape[0], c0.shape[-1]
        i, f, g, o = gs.chunk(4, 2)
        tc = torch.tanh(cs)
        k_c = A.Tanh.delta(o, tc)  # o(1 − tc²)
        k = torch.cat([A.Sigmoid.delta(g, i), A.Sigmoid.delta(_prev(cs, c0, ctx.reverse), f), A.Tanh.delta(i, g),
                       A.Sigmoid.delta(tc, o)], 2).view(T, x.shape[1], 4, H)
        dc, dcs, dms = d_cn, [], []

        def dz_h_of(t, dh):
            nonlocal dc
            dm = dh @ W_hr  # δ_m = W_hrᵀ δ_h
            dms.append(dm)
            dct = dm * k_c[t] if dc is None else torch.addcmul(dc, dm, k_c[t])
            dcs.append(dct)
            dc = dct * f[t]
            return (k[t] * torch.stack([dct, dct, dct, dm], -2)).flatten(-2)
        dhs, dh = _bptt(d_out, dz_h_of, W_hh, None, h0, T, ctx.reverse)
        dcs = _stack(dcs, not ctx.reverse).unsqueeze(-2)
        dms = _stack(dms, not ctx.reverse).unsqueeze(-2)
        dz = (k * torch.cat([dcs.expand(-1, -1, 3, -1), dms], -2)).flatten(-2)
        dx, dW_ih, dW_hh, db_ih, db_hh = _grads_w(ctx, dz, dz, x, h0, out, W_ih, ctx.reverse, 3)
        need = ctx.needs_input_grad
        dW_hr = dhs.reshape(-1, dhs.shape[-1]).t() @ (o * tc).reshape(-1, H) if need[7] else None
        return (dx, dh if need[1] else None, dc if need[2] else None, dW_ih, dW_hh, db_ih, db_hh, dW_hr, None)


# --- the entries: layers × directions, with torch.rnn_tanh / torch.gru / torch.lstm's signatures -----------

def _packed_error(op):
    fail(op, "a PackedSequence goes in as its data and batch_sizes (torch.nn.RNN's packed call), "
             "not as the input tensor")


def _direction_weights(params, k, per, has_biases, proj):
    """(W_ih, W_hh, b_ih, b_hh, W_hr) of layer-direction ``k`` in torch's flat weight list (``per`` each;
    absent ones None)."""
    W_ih, W_hh, *b = params[k * per:(k + 1) * per]
    W_hr = b.pop() if proj else None
    b_ih, b_hh = b if has_biases else (None, None)
    return W_ih, W_hh, b_ih, b_hh, W_hr


def _run(op, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """The stack shared by the four entries. hx: a tensor, or (h0, c0) for lstm."""
    if isinstance(hx, torch.Tensor) and hx.dim() == 1:
        # the packed overload, (data, batch_sizes, hx, params, has_biases, num_layers, dropout, train,
        # bidirectional): every argument one place on
        return _run_packed(op, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                           batch_first)
    if not isinstance(input, torch.Tensor):
        _packed_error(op)
    is_lstm = op == "lstm"
    h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
    proj = is_lstm and h0.shape[-1] != c0.shape[-1]  # proj_size > 0: h is P wide, c is H wide (as torch tells)
    D, per = 2 if bidirectional else 1, (4 if has_biases else 2) + proj
    check(input.dim() in (2, 3), op, f"input must be 2-D (unbatched) or 3-D, got shape {list(input.shape)}")
    check(len(params) == num_layers * D * per, op,
          f"expected {num_layers * D * per} weights for {num_layers} layer(s), "
          f"{'bi' if D == 2 else 'uni'}directional, bias={has_biases}{', with projections' if proj else ''}; "
          f"got {len(params)}")
    check(h0.dim() == input.dim(), op, f"hx must be {input.dim()}-D for a {input.dim()}-D input, got "
                                       f"{h0.dim()}-D")
    check_compatible(op, input=input, h0=h0, c0=c0, weight=params[0])
    unbatched = input.dim() == 2
    if unbatched:
        input, h0, c0 = input.unsqueeze(1), h0.unsqueeze(1), None if c0 is None else c0.unsqueeze(1)
    elif batch_first:
        input = input.transpose(0, 1)
    T, N = input.shape[:2]
    H = params[1].shape[1]
    check(tuple(h0.shape) == (num_layers * D, N, H), op, f"expected hidden state of shape "
          f"{[num_layers * D, N, H]}, got {list(h0.shape)}")
    Hc = params[1].shape[0] // 4  # LSTM's cell width (H, or the one beside a projection)
    check(c0 is None or tuple(c0.shape) == (num_layers * D, N, Hc), op, f"expected cell state of shape "
          f"{[num_layers * D, N, Hc]}, got {list(c0.shape) if c0 is not None else None}")
    # autocast: torch runs all three in the autocast dtype on CUDA (cudnn's cast wrapper) and LSTM, RNN on CPU
    # (their matmuls); CPU's GRU keeps float32 outputs, so ours runs in float32 there
    gru_policy = FP32 if input.device.type == "cpu" else LOWER
    x, hs, cs = input, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            W_ih, W_hh, b_ih, b_hh, W_hr = _direction_weights(params, k, per, has_biases, proj)
            if is_lstm:
                out, c_n, _, _ = apply(LSTMLayer, LOWER, x, h0[k], c0[k], W_ih, W_hh, b_ih, b_hh, d == 1) \
                    if W_hr is None else \
                    apply(LSTMProjLayer, LOWER, x, h0[k], c0[k], W_ih, W_hh, b_ih, b_hh, W_hr, d == 1)
                cs.append(c_n)
            elif op == "gru":
                out, _ = apply(GRULayer, gru_policy, x, h0[k], W_ih, W_hh, b_ih, b_hh, d == 1)
            else:
                out = apply(RNNLayer, LOWER, x, h0[k], W_ih, W_hh, b_ih, b_hh, op == "rnn_relu", d == 1)
            outs.append(out)
            hs.append(out[0 if d == 1 else -1])
        x = outs[0] if D == 1 else torch.cat(outs, 2)
        if dropout > 0 and train and layer < num_layers - 1:
            from .dropout import dropout as _dropout
            x = _dropout(x, dropout, True)
    h_n, c_n = torch.stack(hs), torch.stack(cs) if is_lstm else None
    if unbatched:
        x, h_n, c_n = x.squeeze(1), h_n.squeeze(1), None if c_n is None else c_n.squeeze(1)
    elif batch_first:
        x = x.transpose(0, 1)
    return (x, h_n, c_n) if is_lstm else (x, h_n)


def rnn_tanh(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """δ twin of ``torch.rnn_tanh`` (what nn.RNN(nonlinearity='tanh') calls): (output, h_n)."""
    return _run("rnn_tanh", input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


def rnn_relu(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """δ twin of ``torch.rnn_relu`` (what nn.RNN(nonlinearity='relu') calls): (output, h_n)."""
    return _run("rnn_relu", input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


def gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """δ twin of ``torch.gru`` (what nn.GRU calls): (output, h_n)."""
    return _run("gru", input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


def lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """δ twin of ``torch.lstm`` (what nn.LSTM calls): (output, h_n, c_n); hx = (h0, c0)."""
    return _run("lstm", input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


# --- one step: the cells (nn.RNNCell / GRUCell / LSTMCell) and packed sequences ------------------------------
# A cell is one step of its layer, so it is the layer's δ Function over a sequence of length 1 (its formula and
# backward, with T = 1); the LSTM cell is two Functions (state, then output), because torch's cell computes h'
# from c', so the δ the audit sees arriving at c' includes the one through h'. A PackedSequence runs, per layer and direction, one such step per time step over the
# sequences still running then (batch_sizes[t] of them, longest first); a sequence's state stops where it ends
# (forward) or starts from h0 where it begins (reverse).

def _step(op, x_t, h, c, W_ih, W_hh, b_ih, b_hh, W_hr, policy):
    """(h', c') after one step from (h, c) on x_t (N, I); c None except for lstm."""
    x_t = x_t.unsqueeze(0)
    if op == "lstm":
        out, c_n, _, _ = apply(LSTMLayer, policy, x_t, h, c, W_ih, W_hh, b_ih, b_hh, False) if W_hr is None \
            else apply(LSTMProjLayer, policy, x_t, h, c, W_ih, W_hh, b_ih, b_hh, W_hr, False)
        return out[0], c_n
    if op == "gru":
        return apply(GRULayer, policy, x_t, h, W_ih, W_hh, b_ih, b_hh, False)[0][0], None
    return apply(RNNLayer, policy, x_t, h, W_ih, W_hh, b_ih, b_hh, op == "rnn_relu", False)[0], None


class LSTMCellState(DeltaFunction):
    """The LSTM cell up to its new state: [i|f|g|o] = [σ|σ|tanh|σ](W_ih x + b_ih + W_hh h + b_hh),
    c' = f ⊙ c + i ⊙ g; returns (c', o). (h' = o ⊙ tanh c' is ``LSTMCellOutput``: as in torch's cell, h' is
    computed from c', so the δ arriving at c' includes the one through h'.)

    backward, with δ_c' (all of it) and δ_o:
      δz = [δ_c' ⊙ g ⊙ i(1−i) | δ_c' ⊙ c ⊙ f(1−f) | δ_c' ⊙ i ⊙ (1−g²) | δ_o ⊙ o(1−o)],  δ_c = δ_c' ⊙ f,
      δ_x = W_ihᵀ δz,  δ_h = W_hhᵀ δz,  ∂J/∂W_ih = δz xᵀ,  ∂J/∂W_hh = δz hᵀ,  ∂J/∂b_ih = ∂J/∂b_hh = Σ δz.
    """

    @staticmethod
    def forward(x, h, c, W_ih, W_hh, b_ih, b_hh):
        z = x @ W_ih.t() + h @ W_hh.t()
        if b_ih is not None:
            z = z + (b_ih + b_hh)
        i, f, g, o = z.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        return torch.addcmul(f * c, i, g), o, torch.cat([i, f, g], 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, o, ifg = output
        ctx.mark_non_differentiable(ifg)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs, o, ifg)

    @staticmethod
    def backward(ctx, dc, do, _difg):
        x, h, c, W_ih, W_hh, b_ih, b_hh, o, ifg = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the gates as functions of the inputs
            _, o, ifg = LSTMCellState.forward(x, h, c, W_ih, W_hh, b_ih, b_hh)
        i, f, g = ifg.chunk(3, 1)
        dc = torch.zeros_like(c) if dc is None else dc
        do = torch.zeros_like(o) if do is None else do
        dz = torch.cat([A.Sigmoid.delta(dc * g, i), A.Sigmoid.delta(dc * c, f), A.Tanh.delta(dc * i, g),
                        A.Sigmoid.delta(do, o)], 1)
        need = ctx.needs_input_grad
        db = dz.sum(0) if need[5] or need[6] else None
        return (dz @ W_ih if need[0] else None, dz @ W_hh if need[1] else None, dc * f if need[2] else None,
                dz.t() @ x if need[3] else None, dz.t() @ h if need[4] else None,
                db if need[5] else None, db if need[6] else None)


class LSTMCellOutput(DeltaFunction):
    """h' = o ⊙ tanh(c');  δ_o = δ_h' ⊙ tanh c',  δ_c' = δ_h' ⊙ o ⊙ (1 − tanh² c')."""

    @staticmethod
    def forward(o, c):
        return o * torch.tanh(c)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, dh):
        o, c = ctx.saved_tensors
        tc = torch.tanh(c)
        return dh * tc if ctx.needs_input_grad[0] else None, A.Tanh.delta(dh * o, tc) if ctx.needs_input_grad[1] \
            else None


def _lstm_cell_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    c2, o, _ = apply(LSTMCellState, LOWER, x, h, c, w_ih, w_hh, b_ih, b_hh)
    return apply(LSTMCellOutput, LOWER, o, c2), c2


def _cell_under_cpu_autocast(op, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """(h', c') of a GRU or LSTM cell under CPU autocast, step by step as native's cell takes them: the gates'
    linear maps in the autocast dtype, the rest in what the dtypes promote to, so a float32 state stays
    float32 (native adds the gates to it). Each step is a δ op (linear, sigmoid, tanh, add, mul, sub):
    their δ's, chained, are the cell's backward written out above; the gates' chunks are views."""
    ig, hg = linear(x, w_ih, b_ih), linear(h, w_hh, b_hh)
    if op == "lstm_cell":  # c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh c'
        i, f, g, o = add(hg, ig).chunk(4, 1)
        i, f, g, o = A.sigmoid(i), A.sigmoid(f), A.tanh(g), A.sigmoid(o)
        c2 = add(mul(f, c), mul(i, g))
        return mul(o, A.tanh(c2)), c2
    (i_r, i_z, i_n), (h_r, h_z, h_n) = ig.chunk(3, 1), hg.chunk(3, 1)  # h' = (h − n) ⊙ z + n
    r, z = A.sigmoid(add(h_r, i_r)), A.sigmoid(add(h_z, i_z))
    n = A.tanh(add(i_n, mul(h_n, r)))
    return add(mul(sub(h, n), z), n), None


def _cell(op, input, hx, w_ih, w_hh, b_ih, b_hh):
    is_lstm = op == "lstm_cell"
    h, c = (hx[0], hx[1]) if is_lstm else (hx, None)
    check_tensor(op, "input", input)
    check(input.dim() in (1, 2), op, f"input must be 1-D (unbatched) or 2-D, got shape {list(input.shape)}")
    check(h.dim() == input.dim() and (c is None or c.dim() == input.dim()), op,
          f"hx must be {input.dim()}-D like the input, got {h.dim()}-D")
    check_compatible(op, input=input, hx=h, weight_ih=w_ih, weight_hh=w_hh)
    check(input.shape[-1] == w_ih.shape[1], op, f"input has {input.shape[-1]} features, weight_ih expects "
                                                f"{w_ih.shape[1]}")
    check(h.shape[-1] == w_hh.shape[1] and h.shape[:-1] == input.shape[:-1], op,
          f"hidden state of shape {list(h.shape)} does not fit input {list(input.shape)} and weight_hh "
          f"{list(w_hh.shape)}")
    unbatched = input.dim() == 1
    if unbatched:
        input, h, c = input.unsqueeze(0), h.unsqueeze(0), None if c is None else c.unsqueeze(0)
    low = _autocast_state("cpu") if input.device.type == "cpu" and op in ("gru_cell", "lstm_cell") else None
    if low is not None and any(t is not None and t.dtype != low for t in (h, c)):
        h, c = _cell_under_cpu_autocast(op, input, h, c, w_ih, w_hh, b_ih, b_hh)
    elif is_lstm:
        h, c = _lstm_cell_step(input, h, c, w_ih, w_hh, b_ih, b_hh)
    else:
        h, c = _step(op[:-5], input, h, c, w_ih, w_hh, b_ih, b_hh, None, LOWER)
    if unbatched:
        h, c = h.squeeze(0), None if c is None else c.squeeze(0)
    return (h, c) if is_lstm else h


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """δ twin of ``torch.rnn_tanh_cell`` (nn.RNNCell): h' = tanh(W_ih x + b_ih + W_hh h + b_hh), one step of
    RNNLayer: δz = δ_{h'} ⊙ (1 − h'²), δ_x = W_ihᵀ δz, δ_h = W_hhᵀ δz, ∂J/∂W_ih = δz xᵀ, ∂J/∂W_hh = δz hᵀ."""
    return _cell("rnn_tanh_cell", input, hx, w_ih, w_hh, b_ih, b_hh)


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """δ twin of ``torch.rnn_relu_cell`` (nn.RNNCell(nonlinearity='relu')): RNNLayer's step with f = relu,
    f'(z) = [h' > 0]."""
    return _cell("rnn_relu_cell", input, hx, w_ih, w_hh, b_ih, b_hh)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """δ twin of ``torch.gru_cell`` (nn.GRUCell): one step of GRULayer (its gates and δ's with T = 1)."""
    return _cell("gru_cell", input, hx, w_ih, w_hh, b_ih, b_hh)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """δ twin of ``torch.lstm_cell`` (nn.LSTMCell): (h', c') from LSTMCellState and LSTMCellOutput (h' computed
    from c', as in torch's cell)."""
    return _cell("lstm_cell", input, hx, w_ih, w_hh, b_ih, b_hh)


def _packed_direction(op, x, sizes, h0, c0, weights, reverse, policy):
    """One layer, one direction over packed data x (Σ sizes, I): (output data, h_n, c_n)."""
    starts = [0]
    for b in sizes[:-1]:
        starts.append(starts[-1] + b)
    outs = [None] * len(sizes)
    if not reverse:  # the first sizes[t] sequences run at step t; the others keep their final state
        h, c = h0, c0
        for t, b in enumerate(sizes):
            hn, cn = _step(op, x[starts[t]:starts[t] + b], h[:b], None if c is None else c[:b], *weights, policy)
            outs[t] = hn
            h = hn if b == h.shape[0] else torch.cat([hn, h[b:]])
            c = cn if c is None or b == c.shape[0] else torch.cat([cn, c[b:]])
    else:  # from the last step down; a sequence starts from h0 at its own last element
        h, c = h0[:sizes[-1]], None if c0 is None else c0[:sizes[-1]]
        for t in range(len(sizes) - 1, -1, -1):
            b, m = sizes[t], h.shape[0]
            if b > m:
                h = torch.cat([h, h0[m:b]])
                c = None if c is None else torch.cat([c, c0[m:b]])
            h, c = _step(op, x[starts[t]:starts[t] + b], h, c, *weights, policy)
            outs[t] = h
    return torch.cat(outs), h, c


def _run_packed(op, data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional):
    """The packed overload of the entries (what nn.RNN / GRU / LSTM call with a PackedSequence)."""
    is_lstm = op == "lstm"
    h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
    check(data.dim() == 2, op, f"packed data must be 2-D (Σ lengths, features), got shape {list(data.shape)}")
    proj = is_lstm and h0.shape[-1] != c0.shape[-1]
    D, per = 2 if bidirectional else 1, (4 if has_biases else 2) + proj
    check(len(params) == num_layers * D * per, op,
          f"expected {num_layers * D * per} weights for {num_layers} layer(s), "
          f"{'bi' if D == 2 else 'uni'}directional, bias={has_biases}{', with projections' if proj else ''}; "
          f"got {len(params)}")
    check_compatible(op, input=data, h0=h0, c0=c0, weight=params[0])
    sizes = [int(b) for b in batch_sizes.tolist()]
    check(sum(sizes) == data.shape[0], op, f"batch_sizes sum to {sum(sizes)}, data has {data.shape[0]} rows")
    H = params[1].shape[1]
    check(tuple(h0.shape) == (num_layers * D, sizes[0], H), op, f"expected hidden state of shape "
          f"{[num_layers * D, sizes[0], H]}, got {list(h0.shape)}")
    policy = FP32 if op == "gru" and data.device.type == "cpu" else LOWER
    x, hs, cs = data, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            W_ih, W_hh, b_ih, b_hh, W_hr = _direction_weights(params, k, per, has_biases, proj)
            out, h_n, c_n = _packed_direction(op, x, sizes, h0[k], None if c0 is None else c0[k],
                                              (W_ih, W_hh, b_ih, b_hh, W_hr), d == 1, policy)
            outs.append(out), hs.append(h_n), cs.append(c_n)
        x = outs[0] if D == 1 else torch.cat(outs, 1)
        if dropout > 0 and train and layer < num_layers - 1:
            from .dropout import dropout as _dropout
            x = _dropout(x, dropout, True)
    return (x, torch.stack(hs), torch.stack(cs)) if is_lstm else (x, torch.stack(hs))


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {torch.rnn_tanh: rnn_tanh, torch.rnn_relu: rnn_relu, torch.gru: gru, torch.lstm: lstm,
          torch.rnn_tanh_cell: rnn_tanh_cell, torch.rnn_relu_cell: rnn_relu_cell, torch.gru_cell: gru_cell,
          torch.lstm_cell: lstm_cell}

__all__ = ["rnn_tanh", "rnn_relu", "gru", "lstm", "rnn_tanh_cell", "rnn_relu_cell", "gru_cell", "lstm_cell"]
