"""Attention: scaled dot-product attention as one δ Function, and multi-head attention built from the
δ Functions (linear, matmul, softmax, scaled_dot_product_attention).

In the derivation's terms attention is two "layers" without weights of their own, S = s Q Kᵀ + M and
O = softmax(S) V, between the linear layers that project Q, K, V and the output.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import LOWER, DeltaFunction, apply, check, check_compatible, check_tensor
from .fastpath import attention as _fast
from .activation import softmax
from .dropout import dropout
from .linear import linear, matmul

_OP = "scaled_dot_product_attention"
_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")  # torch >= 2.5
# backward's Lq×Lk pieces stay under this many bytes, by device type (see fastpath.attention.query_rows)
_PIECE_BYTES = _fast.PIECE_BYTES


def _additive_mask(mask, is_causal, rows, keys, row0, like):
    """M as an additive mask over the queries row0 … row0 + rows − 1 and ``keys`` keys: causal (top-left
    aligned, as native: query i sees keys j ≤ i) as 0 / −inf, a bool mask's False as −inf, a float mask as
    given; None without a mask."""
    if is_causal:
        hidden = torch.ones(rows, keys, dtype=torch.bool, device=like.device).triu_(row0 + 1)
        return torch.zeros(rows, keys, dtype=like.dtype, device=like.device).masked_fill_(hidden, float("-inf"))
    if mask is not None and mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill_(~mask, float("-inf"))
    return mask


def _probs(S, mask, is_causal):
    """P = softmax(S) over the keys, S = s Q Kᵀ + M already holding the mask; rows whose every key is masked
    give P = 0 (native's behaviour since torch 2.5, its `_safe_softmax`), not NaN."""
    P = torch.softmax(S, -1)
    if mask is None or is_causal:  # causal: no row is fully masked
        return P
    dead = ~mask.any(-1, keepdim=True) if mask.dtype == torch.bool else (mask == float("-inf")).all(-1, keepdim=True)
    # softmax saves its output when a graph is built (double backward): in place only without one
    return P.masked_fill(dead, 0.0) if torch.is_grad_enabled() else P.masked_fill_(dead, 0.0)


class ScaledDotProductAttention(DeltaFunction):
    """O = P V,  P = softmax(S),  S = s Q Kᵀ + M  (M: additive mask, or -inf where a bool mask is False).

    backward, with δ_O = ∂J/∂O:
      δ_V = Pᵀ δ_O
      δ_P = δ_O Vᵀ
      δ_S = P ⊙ (δ_P − Σ_j δ_P ⊙ P)       (softmax's f', the row sum over the same recomputed P)
      δ_Q = s δ_S K,   δ_K = s δ_Sᵀ Q,   δ_M = δ_S
    each summed over the dims its operand was broadcast along (for K, V: the query heads of a GQA group).

    Forward runs native SDPA for O and saves Q, K, V and M (native saves Q, K, V, O and a logsumexp).
    Saving P instead would cost Lq·Lk per head (twice native's memory at seq 128, growing with the
    sequence), so backward recomputes it (one matrix product and a softmax). How that work is laid out
    (query blocks of bounded size, causal blocks only over the keys they see, batch dims folded into one,
    the mask added by the product) is ``fastpath.attention``'s; measured costs are in the CHANGELOG.
    Recomputing P as exp(S − lse) from the logsumexp of native's CPU flash kernel was tried: no memory
    saved, and slower (an exp pass costs more than the whole softmax).
    """

    @staticmethod
    def forward(q, k, v, mask, is_causal, scale, gqa):
        kw = {"enable_gqa": True} if gqa else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **kw)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, mask, is_causal, scale, gqa = inputs
        ctx.save_for_backward(q, k, v, mask)
        ctx.is_causal, ctx.gqa = is_causal, gqa
        ctx.scale = scale if scale is not None else q.shape[-1] ** -0.5

    @staticmethod
    def backward(ctx, delta):
        q, k, v, mask = ctx.saved_tensors
        need_q, need_k, need_v, need_m = ctx.needs_input_grad[:4]
        s, graph = ctx.scale, torch.is_grad_enabled()  # graph: double backward, every piece is kept
        g = q.shape[-3] // k.shape[-3] if ctx.gqa else 1
        need_dS = need_q or need_k or need_m
        shapes = q.shape, k.shape, v.shape
        batch = delta.shape[:-2]
        # one batch dim where q, k, v, δ_O share theirs: every product below is then a bmm (layout only)
        flat = _fast.folded(q, k, v, delta, g)
        if flat:
            q, k, v, delta = _fast.fold(q), _fast.fold(k), _fast.fold(v), _fast.fold(delta)
        scores = _fast.scaled_scores if flat else _fast.scaled_scores_plain

        def heads(t):  # K or V with one head per query head (GQA: each repeated g times)
            return t.repeat_interleave(g, -3) if g > 1 else t

        def block(q, delta, mask, row0):
            """The formulas for the queries row0, row0 + 1, ...: δ_Q of theirs, their terms of δ_K, δ_V, δ_M
            (causal: over the keys they see, j < row0 + their number, not all Lk)."""
            n = q.shape[-2]
            k_, v_ = (k[..., :row0 + n, :], v[..., :row0 + n, :]) if ctx.is_causal else (k, v)
            k_, v_ = heads(k_), heads(v_)
            if not flat:  # matmul copies Kᵀ, Vᵀ where their batch dims do not fold; a contiguous copy is cheaper
                k_, v_ = k_.contiguous(), v_.contiguous()
            m = k_.shape[-2]

            def unfolded(t):  # an Lq×Lk piece with the batch dims the mask broadcasts over
                return t.view(*batch, n, m) if flat else t
            # every piece is freed as soon as it has been used, which keeps backward's transient memory low
            M = _additive_mask(mask, ctx.is_causal, n, m, row0, q)
            if flat and M is not None and M.dim() > 2:  # the mask broadcasts over the unfolded batch dims
                S = scores(q, k_, s, None, graph)
                S = (unfolded(S) + M if graph else unfolded(S).add_(M)).view(S.shape)
            else:
                S = scores(q, k_, s, M, graph)
            P = _probs(unfolded(S), mask, ctx.is_causal).view(S.shape)
            del S, M
            grad_q = grad_k = grad_v = grad_m = dS = None
            if need_dS:
                dP = delta @ v_.mT
                # D = Σ_j δ_P ⊙ P with the P recomputed here, not Σ_d δ_O ⊙ O with the forward's O: on
                # saturated rows (large |q·k|, P nearly one-hot) δ_P − D cancels, and a D from the other P
                # (its rounding) left float32 δ_Q, δ_K up to 5x native's error; a row-wise dot, no Lq×Lk temporary
                D = (P.unsqueeze(-2) @ dP.unsqueeze(-1)).squeeze(-1)
                dS = P * (dP - D) if graph else dP.sub_(D).mul_(P)
                del dP
            if need_v:
                grad_v = P.mT @ delta
            del P
            if need_q:
                grad_q = dS @ k_
                grad_q = grad_q * s if graph else grad_q.mul_(s)
            if need_k:
                grad_k = dS.mT @ q
                grad_k = grad_k * s if graph else grad_k.mul_(s)
            if need_m:
                grad_m = unfolded(dS).sum_to_size(mask.shape)
            return grad_q, grad_k, grad_v, grad_m

        def acc(total, part):  # Σ over the blocks, kept as it goes; a causal block's part covers fewer keys
            n = part.shape[-2]
            if total is None:
                return part if n == Lk else F.pad(part, (0, 0, 0, Lk - n))
            if graph:
                return total + F.pad(part, (0, 0, 0, Lk - n))
            total[..., :n, :].add_(part)
            return total

        # queries in blocks whose Lq×Lk pieces stay small (native's flash kernel holds none): softmax runs
        # over the keys, so each block of query rows is exact on its own
        Lq, Lk = q.shape[-2], k.shape[-2]
        rows = _fast.query_rows(batch.numel(), Lk, q.element_size(), q.device.type, _PIECE_BYTES)
        per_row_mask = mask is not None and mask.dim() >= 2 and mask.shape[-2] != 1
        grad_qs, grad_ms, grad_k, grad_v, grad_m = [], [], None, None, None
        for r in range(0, max(Lq, 1), rows):  # (one empty block for an empty query sequence)
            gq, gk, gv, gm = block(q[..., r:r + rows, :], delta[..., r:r + rows, :],
                                   mask[..., r:r + rows, :] if per_row_mask else mask, r)
            grad_qs.append(gq)
            grad_k = acc(grad_k, gk) if need_k else None
            grad_v = acc(grad_v, gv) if need_v else None
            if need_m and per_row_mask:
                grad_ms.append(gm)
            elif need_m:
                grad_m = gm if grad_m is None else grad_m + gm if graph else grad_m.add_(gm)
        grad_q = (grad_qs[0] if len(grad_qs) == 1 else torch.cat(grad_qs, -2)) if need_q else None
        if grad_ms:
            grad_m = grad_ms[0] if len(grad_ms) == 1 else torch.cat(grad_ms, -2)
        if g > 1:  # K, V served g query heads each: sum the group's contributions
            grad_k = grad_k.unflatten(-3, (-1, g)).sum(-3) if grad_k is not None else None
            grad_v = grad_v.unflatten(-3, (-1, g)).sum(-3) if grad_v is not None else None
        grad_q, grad_k, grad_v = (None if t is None else t.reshape(shape) if flat else t.sum_to_size(shape)
                                  for t, shape in zip((grad_q, grad_k, grad_v), shapes))
        return grad_q, grad_k, grad_v, grad_m, None, None, None


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """δ twin of ``torch.nn.functional.scaled_dot_product_attention`` (dropout_p must be 0)."""
    check_compatible(_OP, query=query, key=key, value=value)
    check(dropout_p == 0.0 or query.device.type == "cpu", _OP, f"dropout_p={dropout_p} is supported on the CPU "
          f"only, not {query.device.type}: there native's fused kernels draw their own dropout mask, which "
          "torchbp cannot reproduce; use dropout_p=0.0 (e.g. eval mode or the module's dropout=0)")
    check(not enable_gqa or _HAS_GQA, _OP, "enable_gqa needs torch >= 2.5")
    check(query.dim() >= 2 and key.dim() >= 2 and value.dim() >= 2, _OP,
          f"query, key and value need at least 2 dims, got shapes {list(query.shape)}, {list(key.shape)}, "
          f"{list(value.shape)}")
    check(query.shape[-1] == key.shape[-1] and key.shape[-2] == value.shape[-2], _OP,
          f"query and key must share the last dim and key and value the sequence dim, got shapes "
          f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}")
    if attn_mask is not None:
        check_tensor(_OP, "attn_mask", attn_mask)
        check(not is_causal, _OP, "pass either attn_mask or is_causal=True, not both (torch's CPU kernel takes "
                                  "both and drops the mask)")
        check(attn_mask.dtype == torch.bool or attn_mask.dtype == query.dtype, _OP,
              f"attn_mask must be bool or have query's dtype {query.dtype}, got {attn_mask.dtype}")
        check(attn_mask.device == query.device, _OP,
              f"attn_mask is on {attn_mask.device} but query is on {query.device}")
    gqa = bool(enable_gqa) and query.dim() >= 3 and query.shape[-3] != key.shape[-3]
    if gqa:
        check(query.shape[-3] % key.shape[-3] == 0 and key.shape[-3] == value.shape[-3], _OP,
              f"enable_gqa: query's {query.shape[-3]} heads must be a multiple of key's and value's "
              f"({key.shape[-3]}, {value.shape[-3]})")
    if dropout_p > 0:
        return _sdpa_dropout(query, key, value, attn_mask, dropout_p, is_causal, scale, gqa)
    return apply(ScaledDotProductAttention, LOWER, query, key, value, attn_mask, bool(is_causal), scale, gqa)


def _sdpa_dropout(q, k, v, mask, p, is_causal, scale, gqa):
    """With dropout, native's CPU SDPA is its math path: P = softmax(s Q Kᵀ + M), then at::dropout(P),
    then P V. Composed here from δ Functions in the same order, so the same RNG state draws the same mask."""
    if gqa:
        g = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(g, -3), v.repeat_interleave(g, -3)
    logits = matmul(q, k.mT) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        mask = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    P = softmax(logits + mask if mask is not None else logits, dim=-1)
    if mask is not None:  # native's safe softmax: rows with every key masked give 0, not NaN
        P = P.masked_fill((mask == float("-inf")).all(-1, keepdim=True), 0.0)
    return matmul(dropout(P, p), v)


def multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                                 bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                                 training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                                 use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                                 v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                                 is_causal=False):
    """δ twin of ``torch.nn.functional.multi_head_attention_forward``: the same steps as native, each one
    a δ Function (linear projections, SDPA; with ``need_weights`` the explicit matmul, softmax, matmul
    that native runs there, so the returned weights carry δ gradients too). Sequence-first layout."""
    op = "multi_head_attention_forward"
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
    L, N, E = query.shape
    H, hd = num_heads, E // num_heads
    check(E == embed_dim_to_check, op, f"was expecting embedding dimension of {embed_dim_to_check}, but got {E}")
    check(hd * H == E, op, f"embed_dim {E} not divisible by num_heads {H}")
    check(not (is_causal and attn_mask is None), op, "is_causal=True is a hint and needs attn_mask too "
          "(e.g. torch.nn.Transformer.generate_square_subsequent_mask)")
    dropout_p = dropout_p if training else 0.0
    # masks exactly as native canonicalises them (bool -> additive float -inf)
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # native then lets SDPA build the causal mask
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        is_causal = False  # the mask itself is used from here on

    # projections: q (L, N, E), k and v (S, N, E)
    if not use_separate_proj_weight:
        check(in_proj_weight is not None, op, "use_separate_proj_weight is False but in_proj_weight is None")
        check(key.shape == value.shape, op, f"key shape {key.shape} does not match value shape {value.shape}")
        if query is key and key is value:  # self-attention: one matmul for all three
            q, k, v = linear(query, in_proj_weight, in_proj_bias).unflatten(-1, (3, E)).unbind(-2)
        else:
            wq, wk, wv = in_proj_weight.chunk(3)
            bq, bk, bv = in_proj_bias.chunk(3) if in_proj_bias is not None else (None,) * 3
            q, k, v = linear(query, wq, bq), linear(key, wk, bk), linear(value, wv, bv)
    else:
        check(key.shape[:2] == value.shape[:2], op,
              f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}")
        bq, bk, bv = in_proj_bias.chunk(3) if in_proj_bias is not None else (None,) * 3
        q, k, v = linear(query, q_proj_weight, bq), linear(key, k_proj_weight, bk), linear(value, v_proj_weight, bv)

    if attn_mask is not None:  # to (1 or N, 1 or H, L, S)
        want = (L, key.shape[0]) if attn_mask.dim() == 2 else (N * H, L, key.shape[0])
        check(attn_mask.dim() in (2, 3) and tuple(attn_mask.shape) == want, op,
              f"attn_mask must have shape {list(want)}, got {list(attn_mask.shape)}")
        attn_mask = attn_mask.view(1, 1, L, attn_mask.shape[-1]) if attn_mask.dim() == 2 \
            else attn_mask.view(N, H, L, attn_mask.shape[-1])
    if bias_k is not None or bias_v is not None:
        check(bias_k is not None and bias_v is not None, op, "bias_k and bias_v must be set together")
        check(static_k is None and static_v is None, op, "bias cannot be added to static key/value")
        k, v = torch.cat([k, bias_k.expand(1, N, E)]), torch.cat([v, bias_v.expand(1, N, E)])
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None

    # heads: (N, H, L, hd); static_k / static_v come as (N*H, S, hd)
    q = q.view(L, N, H, hd).permute(1, 2, 0, 3)
    # sizes spelled out: -1 is ambiguous for an empty batch
    k = k.view(k.shape[0], N, H, hd).permute(1, 2, 0, 3) if static_k is None \
        else static_k.view(N, H, static_k.shape[1], hd)
    v = v.view(v.shape[0], N, H, hd).permute(1, 2, 0, 3) if static_v is None \
        else static_v.view(N, H, static_v.shape[1], hd)
    if add_zero_attn:
        k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)
        v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    S = k.shape[2]
    if key_padding_mask is not None:
        check(tuple(key_padding_mask.shape) == (N, S), op,
              f"key_padding_mask must have shape {[N, S]}, got {list(key_padding_mask.shape)}")
        kpm = key_padding_mask.view(N, 1, 1, S)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm

    if need_weights:  # native's explicit path: P = softmax(s Q Kᵀ + M), O = P V
        logits = matmul(q * math.sqrt(1.0 / hd), k.mT)  # native's scaling, to the bit
        P = softmax(logits + attn_mask if attn_mask is not None else logits, dim=-1)
        P = dropout(P, dropout_p) if dropout_p > 0 else P  # native returns the weights after dropout
        o = matmul(P, v)
        weights = P.mean(dim=1) if average_attn_weights else P
    else:
        o = scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal=is_causal)
        weights = None
    o = linear(o.permute(2, 0, 1, 3).reshape(L * N, E), out_proj_weight, out_proj_bias)
    o = o.view(L, N, out_proj_weight.shape[0])
    if not is_batched:
        o = o.squeeze(1)
        weights = weights.squeeze(0) if weights is not None else None
    return o, weights


# native callable -> δ twin with the same signature; read by torchbp.registry
ROUTES = {F.scaled_dot_product_attention: scaled_dot_product_attention,
          F.multi_head_attention_forward: multi_head_attention_forward}

__all__ = ["scaled_dot_product_attention", "multi_head_attention_forward"]
