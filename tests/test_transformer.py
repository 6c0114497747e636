"""The Transformer containers swapped (TransformerEncoderLayer / DecoderLayer, TransformerEncoder / Decoder,
Transformer): equal to native in float64 with every parameter's gradient from δ Functions, the feed-forward
activation function included; fast paths only where no gradient is recorded."""
import copy

import pytest
import torch

import torchbp
from torchbp import registry
from util import delta_params, grad_fn_names, rel_err

DT = torch.float64


def _grads(m, inputs, kw, seed=1):
    xs = [x.clone().requires_grad_() for x in inputs]
    torch.manual_seed(seed)  # the same dropout masks on both sides
    out = m(*xs, **kw)
    g = torch.autograd.grad((out * out.detach().sin()).sum(), [*xs, *m.parameters()])
    return out, g


def _compare(native, twin, inputs, kw):
    out_n, g_n = _grads(native, inputs, kw)
    out_s, g_s = _grads(twin, inputs, kw)
    assert rel_err(out_s, out_n) <= 1e-10
    for s, n in zip(g_s, g_n):
        assert rel_err(s, n) <= 1e-10
    return out_s


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first,batch_first,train", [(False, False, True), (True, True, True),
                                                           (False, True, False), (True, False, False)])
def test_transformer_swapped_trains_with_delta_everywhere(activation, norm_first, batch_first, train):
    torch.manual_seed(0)
    native = torch.nn.Transformer(8, 2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=16,
                                  dropout=0.1, activation=activation, batch_first=batch_first,
                                  norm_first=norm_first).to(DT).train(train)
    twin = torchbp.swap(copy.deepcopy(native), strict=True)
    for name, m in twin.named_modules():  # every module swapped, the containers too (ModuleList runs nothing)
        assert type(m) is torch.nn.ModuleList or registry.native_for(type(m)) is not None, name
    S, T, N = 5, 4, 3
    src = torch.randn((N, S, 8) if batch_first else (S, N, 8), dtype=DT)
    tgt = torch.randn((N, T, 8) if batch_first else (T, N, 8), dtype=DT)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -2:] = True
    kw = dict(tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=DT), tgt_is_causal=True,
              src_key_padding_mask=kpm, memory_key_padding_mask=kpm)
    out = _compare(native, twin, (src, tgt), kw)
    assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}
    names = grad_fn_names(out)
    assert not any(n.startswith(("ReluBackward", "GeluBackward")) for n in names), names  # the δ activation


def test_decoder_layer_and_decoder_alone():
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, activation="gelu").to(DT)
    for native in (layer, torch.nn.TransformerDecoder(layer, 2, norm=torch.nn.LayerNorm(8)).to(DT)):
        twin = torchbp.swap(copy.deepcopy(native), strict=True)
        tgt, mem = torch.randn(4, 2, 8, dtype=DT), torch.randn(6, 2, 8, dtype=DT)
        out = _compare(native, twin, (tgt, mem), {})
        assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}


@pytest.fixture
def no_fast_kernels(monkeypatch):
    """Makes the fused encoder kernel and the nested-tensor conversion raise while set."""
    def refuse(*a, **k):
        raise AssertionError("a fast path ran while gradients were recorded")

    def arm(fused=True):
        if fused:
            monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", refuse)
        monkeypatch.setattr(torch, "_nested_tensor_from_mask", refuse)
    return arm


def _frozen_encoder(trainable_layers, norm):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 3, norm=torch.nn.LayerNorm(8) if norm else None,
                                      enable_nested_tensor=True).to(DT).eval()
    for i, m in enumerate(enc.layers):
        m.requires_grad_(i in trainable_layers)
    src = torch.randn(3, 5, 8, dtype=DT)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[0, -2:] = True
    kpm[1, -1] = True
    return enc, src, kpm


def _out_and_grads(out, m):
    return [out, *torch.autograd.grad((out * out.detach().sin()).sum(), [p for p in m.parameters() if p.requires_grad])]


def test_encoder_frozen_first_layer_in_eval_stays_on_padded_tensors(no_fast_kernels):
    """Native's encoder looks only at its first layer to choose nested tensors: a frozen first layer in eval mode
    with a padding mask sends the trainable layers through nested tensors, which native's attention then refuses.
    The twin stays on padded tensors with δ everywhere and keeps the nested run's zeros at padded positions."""
    native, src, kpm = _frozen_encoder({1, 2}, norm=False)
    with pytest.raises(AssertionError, match="NestedTensor"):
        native(src, src_key_padding_mask=kpm)
    twin = torchbp.swap(copy.deepcopy(native))
    padded = copy.deepcopy(native)
    padded.use_nested_tensor = False  # native's own padded run: the reference, its padded positions zeroed
    ref = _out_and_grads(padded(src, src_key_padding_mask=kpm).masked_fill(kpm.unsqueeze(-1), 0.0), padded)
    no_fast_kernels(fused=False)  # the frozen first layer may take its fused kernel: nothing to record there
    out = twin(src, src_key_padding_mask=kpm)
    for s, n in zip(_out_and_grads(out, twin), ref):
        assert rel_err(s, n) <= 1e-10
    assert delta_params(twin, out) == {n for n, p in twin.named_parameters() if p.requires_grad}


def test_encoder_frozen_layers_trainable_norm_matches_native_nested_run(monkeypatch):
    """Every layer frozen, the final norm trained: native runs the layers as nested tensors (fused kernels, no
    graph) and the norm on the padded result; the twin's values and δ norm gradients are the same."""
    native, src, kpm = _frozen_encoder(set(), norm=True)
    twin = torchbp.swap(copy.deepcopy(native))
    ref = _out_and_grads(native(src, src_key_padding_mask=kpm), native)

    def refuse(*a, **k):
        raise AssertionError("nested tensors while gradients were recorded")
    monkeypatch.setattr(torch, "_nested_tensor_from_mask", refuse)
    out = twin(src, src_key_padding_mask=kpm)
    for s, n in zip(_out_and_grads(out, twin), ref):
        assert rel_err(s, n) <= 1e-10
    assert delta_params(twin, out) == {"norm.weight", "norm.bias"}


@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_records_with_delta_and_keeps_fast_paths_without_a_graph(no_fast_kernels, batch_first):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
    native = torch.nn.TransformerEncoder(layer, 2).to(DT).eval()
    twin = torchbp.swap(copy.deepcopy(native))
    src = torch.randn((2, 5, 8) if batch_first else (5, 2, 8), dtype=DT)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():  # no graph: native's fast paths are the twin's too (same values)
        assert rel_err(twin(src, src_key_padding_mask=kpm), native(src, src_key_padding_mask=kpm)) <= 1e-10
    no_fast_kernels()
    out = _compare(native, twin, (src,), dict(src_key_padding_mask=kpm))
    assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}
