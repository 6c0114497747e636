"""The real-model zoo: torchvision and Hugging Face transformers models people did not write for torchbp, built
from tiny configs with random init (nothing downloads). For each: a swapped + ``manual_backward`` training
step equal to native autograd in float64, and a float64 audit that is OK with coverage 1.0 (every parameter's
gradient from δ formulas). Skipped where torchvision / transformers are not installed (the ``zoo`` extra)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import torchbp
from thirdparty import torchvision as _torchvision, transformers as _transformers
from util import DEVICES


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these small float64 models spend their time in many tiny kernels (a depthwise
    convolution is one kernel per channel group), where a thread pool's barriers cost more than they save,
    and far more on a busy machine (MobileNetV3's audit: 51 s with two threads under load, 2.5 s with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- the comparison -------------------------------------------------------------------------------------

def _grads(model, inputs, loss_fn, routed):
    model.zero_grad(set_to_none=True)
    args, kwargs = (inputs, {}) if not isinstance(inputs, dict) else ((), inputs)
    args = args if isinstance(args, tuple) else (args,)
    ctx = torchbp.manual_backward() if routed else warnings.catch_warnings()
    with ctx:
        loss = loss_fn(model(*args, **kwargs))
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _projection(seed=1):
    """<v, out> for a fixed random v (a loss like ‖out‖² would cancel through a final LayerNorm)."""
    vs = {}

    def loss(out):
        if out.shape not in vs:
            g = torch.Generator().manual_seed(seed)
            vs[out.shape] = torch.randn(out.shape, generator=g, dtype=torch.float64)
        return (vs[out.shape].to(out) * out).sum()
    return loss


def _same_gradients(native, inputs, loss_fn):
    """A strictly swapped copy (modules without a twin get routed twins; strict would raise where a parameter
    met an op without a δ formula) under manual_backward gives native's parameter gradients."""
    manual = copy.deepcopy(native)
    torchbp.swap(manual, strict=True)
    gn = _grads(native, inputs, loss_fn, routed=False)
    gm = _grads(manual, inputs, loss_fn, routed=True)
    assert gn.keys() == gm.keys()
    # relative to the largest gradient of the same layer: an attention key's bias has an exactly-zero
    # gradient (softmax ignores a per-query constant), where both sides hold only rounding noise
    scale = {}
    for k, g in gn.items():
        mod = k.rpartition(".")[0]
        scale[mod] = max(scale.get(mod, 0.0), float(g.norm()))
    worst = max((float((gm[k] - gn[k]).norm()) / max(scale[k.rpartition(".")[0]], 1e-300), k) for k in gn)
    assert worst[0] <= 1e-10, worst


class _First(torch.nn.Module):
    """The audit wants a tensor out: a Hugging Face model's first output (logits / last hidden state)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *args, **kwargs):
        out = self.m(*args, **kwargs, return_dict=True)
        for key in ("logits", "last_hidden_state"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        return out[0]


def _check(model, inputs, device):
    model = model.double().to(device)
    inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
    r = torchbp.audit(model, inputs)
    assert r.ok, str(r)
    assert r.coverage == 1.0, str(r)
    _same_gradients(model, inputs, _projection())


# --- torchvision ------------------------------------------------------------------------------------------

def _vision(name):
    tv = _torchvision()
    M = tv.models
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    if name == "resnet18":
        # batch 4: layer4's BatchNorm sees 4 values per channel at 1x1 (at batch 2 it would normalise two values
        # to ±1, whose δ_x is exactly 0: rounding noise on both sides, nothing to compare)
        return M.resnet18(num_classes=10), torch.randn(4, 3, 32, 32, dtype=torch.float64)
    if name == "mobilenet_v3_small":
        # float64 depthwise convolutions are slow on the CPU (native's too): a narrow net on 16x16 images
        return M.mobilenet_v3_small(num_classes=10, dropout=0.0, width_mult=0.5), \
            torch.randn(4, 3, 16, 16, dtype=torch.float64)
    if name == "efficientnet_b0":
        from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
        setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
        return EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=10,
                            last_channel=last), torch.randn(4, 3, 16, 16, dtype=torch.float64)
    if name == "convnext_tiny":
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt
        setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
        # layer scale 0.5, not 1e-6: a 1e-6 scale makes each block's δ contribution vanish below rounding
        return ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=0.5, num_classes=10), img
    if name == "densenet121":
        return M.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                          num_classes=10), torch.randn(4, 3, 64, 64, dtype=torch.float64)
    if name == "regnet_y_400mf":
        from torchvision.models.regnet import BlockParams, RegNet
        params = BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
        return RegNet(params, num_classes=10), torch.randn(4, 3, 64, 64, dtype=torch.float64)
    if name == "vit":
        return M.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                   mlp_dim=32, num_classes=10), img
    if name == "swin":
        return M.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                 window_size=[2, 2], stochastic_depth_prob=0.0, num_classes=10), img
    if name == "lraspp_mobilenet_v3_large":
        from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3
        backbone = M.mobilenet_v3_large(width_mult=0.25, dilated=True)  # lraspp_mobilenet_v3_large's, narrower
        return _lraspp_mobilenetv3(backbone, num_classes=3), torch.randn(4, 3, 32, 32, dtype=torch.float64)
    if name == "r3d_18":
        # batch 4 at 2x16x16: layer4's BatchNorm3d sees 4 values per channel
        return M.video.r3d_18(num_classes=4), torch.randn(4, 3, 2, 16, 16, dtype=torch.float64)
    raise KeyError(name)


VISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121", "regnet_y_400mf",
          "vit", "swin", "lraspp_mobilenet_v3_large", "r3d_18"]


class _Out(torch.nn.Module):
    """LRASPP returns {"out": tensor}: the audit wants the tensor."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x)
        return out["out"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", VISION)
@pytest.mark.parametrize("device", DEVICES)
def test_torchvision_zoo(name, device):
    model, x = _vision(name)
    _check(_Out(model), x, device)


# --- transformers -----------------------------------------------------------------------------------------

def _text(name):
    tr = _transformers()
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 12))
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32)
    if name == "bert":
        cfg = tr.BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **small)
        return tr.BertModel(cfg, add_pooling_layer=False), {"input_ids": ids}
    if name == "gpt2":
        cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)
        return tr.GPT2LMHeadModel(cfg), {"input_ids": ids}
    if name == "t5":
        cfg = tr.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                          relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0)
        return tr.T5ForConditionalGeneration(cfg), {"input_ids": ids, "decoder_input_ids": ids[:, :6]}
    if name == "llama":
        cfg = tr.LlamaConfig(num_key_value_heads=2, **small)
        return tr.LlamaForCausalLM(cfg), {"input_ids": ids}
    if name == "qwen2":
        cfg = tr.Qwen2Config(num_key_value_heads=2, **small)
        return tr.Qwen2ForCausalLM(cfg), {"input_ids": ids}
    if name == "hf_vit":
        cfg = tr.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
        return tr.ViTModel(cfg, add_pooling_layer=False), {"pixel_values": torch.randn(2, 3, 16, 16)}
    if name == "whisper":
        cfg = tr.WhisperConfig(vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16,
                               dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        return tr.WhisperModel(cfg), {"input_features": torch.randn(2, 8, 32), "decoder_input_ids": ids[:, :6]}
    if name == "wav2vec2":
        cfg = tr.Wav2Vec2Config(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                                hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, final_dropout=0.0)
        return tr.Wav2Vec2Model(cfg), {"input_values": torch.randn(2, 400)}
    if name == "bart":
        cfg = tr.BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
                            activation_dropout=0.0, scale_embedding=True)
        return tr.BartModel(cfg), {"input_ids": ids}
    raise KeyError(name)


TEXT = ["bert", "gpt2", "t5", "llama", "qwen2", "hf_vit", "whisper", "wav2vec2", "bart"]


@pytest.mark.parametrize("name", TEXT)
@pytest.mark.parametrize("device", DEVICES)
def test_transformers_zoo(name, device):
    model, inputs = _text(name)
    model.eval()  # eval: no dropout anywhere (the configs zero it too); gradients still flow
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    _check(_First(model), inputs, device)
