"""Twins of torch.nn's attention modules: same constructor, parameters and state_dict; forward routed
through the δ Functions."""
import torch

from .. import functional as tbf


class MultiheadAttention(torch.nn.MultiheadAttention):
    """δ twin of ``torch.nn.MultiheadAttention``.

    When a graph is being built (grad enabled and an input or parameter requires grad) the forward is
    native's slow path with every step a δ Function (``torchbp.functional.multi_head_attention_forward``).
    Otherwise it is native's forward, fast path (``torch._native_multi_head_attention``) included: with
    no graph there is no backward to check, and the fast path is native's own inference optimisation.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (query, key, value, *self.parameters()))):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        batched_bf = self.batch_first and query.dim() == 3
        if batched_bf:  # to sequence-first, keeping native's `query is key is value` identities
            q = query.transpose(1, 0)
            k = q if key is query else key.transpose(1, 0)
            v = k if value is key else value.transpose(1, 0)
            query, key, value = q, k, v
        separate = not self._qkv_same_embed_dim
        out, weights = tbf.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight,
            self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(1, 0) if batched_bf else out), weights


class NonDynamicallyQuantizableLinear(torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
    """MultiheadAttention's ``out_proj`` class (a Linear in all but name): twinned so that swapping, strict
    included, covers it; MultiheadAttention itself uses only its parameters."""

    def forward(self, input):
        return tbf.linear(input, self.weight, self.bias)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.MultiheadAttention: MultiheadAttention,
         torch.nn.modules.linear.NonDynamicallyQuantizableLinear: NonDynamicallyQuantizableLinear}
__all__ = ["MultiheadAttention"]
