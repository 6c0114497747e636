"""Twins of torch.nn's Transformer containers: TransformerEncoderLayer, TransformerDecoderLayer,
TransformerEncoder, TransformerDecoder, Transformer.

Their parts (MultiheadAttention, Linear, LayerNorm, Dropout) are twins of their own; what the containers add:
- the feed-forward activation, a plain function (``F.relu``, ``F.gelu``, ...) outside any module, runs as its
  δ twin (whatever ``manual_backward`` would route it to);
- the fast paths (the fused ``torch._transformer_encoder_layer_fwd`` kernel, nested tensors in
  TransformerEncoder) run only where no gradient is recorded: there is no backward there to check. Where a
  graph is recorded, the layers run their step-by-step path on padded tensors. (Native's encoder decides on
  nested tensors from its first layer alone, so a frozen first layer in eval mode sends the other layers'
  trainable parameters through nested tensors; the twin keeps them padded and zeroes the padded positions
  where native's nested run leaves zeros.)
"""
import torch
import torch.nn.functional as F


def _recording(*tensors) -> bool:
    """Whether autograd records a graph through any of these (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _activation(fn):
    """The δ twin of a feed-forward activation given as a function (modules are swapped on their own)."""
    if isinstance(fn, torch.nn.Module):
        return fn
    from .. import registry  # registry imports this package: looked up at call time
    return registry.function_for(fn) or fn


class _FeedForward:
    def _ff_block(self, x):
        act = _activation(self.activation)
        x = self.linear2(self.dropout(act(self.linear1(x))))
        return (self.dropout2 if isinstance(self, torch.nn.TransformerEncoderLayer) else self.dropout3)(x)


class TransformerEncoderLayer(_FeedForward, torch.nn.TransformerEncoderLayer):
    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        # native's forward takes its fused kernel only when no graph is recorded through src or a parameter
        # (its own check covers src and every parameter); otherwise the blocks above, with δ parts
        return super().forward(src, src_mask, src_key_padding_mask, is_causal)


class TransformerDecoderLayer(_FeedForward, torch.nn.TransformerDecoderLayer):
    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        # no fast path in native's decoder layer: its blocks, with δ parts
        return super().forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                               memory_key_padding_mask, tgt_is_causal, memory_is_causal)


def _native_nests(enc, src, mask, kpm) -> bool:
    """Whether native's TransformerEncoder.forward would run these inputs as nested tensors (its conditions,
    in its order), for a call that records a graph."""
    first = enc.layers[0]
    if not (torch.backends.mha.get_fastpath_enabled() and getattr(enc, "use_nested_tensor", False)) \
            or first.training or src.dim() != 3 or kpm is None:
        return False
    if getattr(enc, "mask_check", True) and (torch.compiler.is_compiling()
                                             or not torch._nested_tensor_from_mask_left_aligned(src, kpm.logical_not())):
        return False
    if src.is_nested or mask is not None or torch.is_autocast_enabled():
        return False
    args = (src, first.self_attn.in_proj_weight, first.self_attn.in_proj_bias, first.self_attn.out_proj.weight,
            first.self_attn.out_proj.bias, first.norm1.weight, first.norm1.bias, first.norm2.weight,
            first.norm2.bias, first.linear1.weight, first.linear1.bias, first.linear2.weight, first.linear2.bias)
    if torch.overrides.has_torch_function(args) or src.device.type not in ("cpu", "cuda", "xpu"):
        return False
    return not _recording(*args)


class TransformerEncoder(torch.nn.TransformerEncoder):
    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if not _recording(src, *self.parameters()):
            return super().forward(src, mask, src_key_padding_mask, is_causal)
        kpm = F._canonical_mask(mask=src_key_padding_mask, mask_name="src_key_padding_mask",
                                other_type=F._none_or_dtype(mask), other_name="mask", target_type=src.dtype)
        mask = F._canonical_mask(mask=mask, mask_name="mask", other_type=None, other_name="",
                                 target_type=src.dtype, check_other=False)
        nests = _native_nests(self, src, mask, kpm)
        batch_first = self.layers[0].self_attn.batch_first
        seq_len = torch.nn.modules.transformer._get_seq_len(src, batch_first)
        is_causal = torch.nn.modules.transformer._detect_is_causal_mask(mask, is_causal, seq_len)
        out = src
        for mod in self.layers:
            out = mod(out, src_mask=mask, is_causal=is_causal, src_key_padding_mask=kpm)
        if nests:  # native's nested run returns zeros at the padded positions
            pad = kpm != 0 if kpm.dtype != torch.bool else kpm
            out = out.masked_fill((pad if batch_first else pad.t()).unsqueeze(-1), 0.0)
        if self.norm is not None:
            out = self.norm(out)
        return out


class TransformerDecoder(torch.nn.TransformerDecoder):
    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        # no fast path in native's decoder: its layers are twins
        return super().forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                               memory_key_padding_mask, tgt_is_causal, memory_is_causal)


class Transformer(torch.nn.Transformer):
    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None,
                tgt_is_causal=None, memory_is_causal=False):
        # native's forward checks shapes and calls its encoder and decoder, which are twins
        return super().forward(src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask,
                               tgt_key_padding_mask, memory_key_padding_mask, src_is_causal, tgt_is_causal,
                               memory_is_causal)


# native module class -> twin; read by torchbp.registry
TWINS = {torch.nn.TransformerEncoderLayer: TransformerEncoderLayer,
         torch.nn.TransformerDecoderLayer: TransformerDecoderLayer,
         torch.nn.TransformerEncoder: TransformerEncoder, torch.nn.TransformerDecoder: TransformerDecoder,
         torch.nn.Transformer: Transformer}
__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
           "Transformer"]
