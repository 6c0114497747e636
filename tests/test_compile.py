"""Swapped models under torch.compile: every δ layer traces into one graph (a graph break would run the
layer eagerly between compiled pieces, silently costing the speed compile is used for), and the compiled
gradients are the eager δ gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import torchbp
from util import DEVICES

dynamo = pytest.importorskip("torch._dynamo")
if not (hasattr(torch, "compile") and dynamo.is_dynamo_supported()):
    pytest.skip("torch.compile unavailable", allow_module_level=True)


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64)


class _Routed(nn.Module):
    """The regression losses (native modules) through ``torchbp.manual_backward``'s routing of functional
    calls."""

    def forward(self, h, y):
        with torchbp.manual_backward():
            return nn.MSELoss()(h, y) + nn.HuberLoss(delta=0.5)(h, y) + nn.L1Loss()(h, y) + nn.SmoothL1Loss()(h, y)


# (id, module, inputs): one of each family and of every kind of δ path (in-place activations, a module's
# own twin, a fused nn.Sequential run, recurrent loops, losses with their targets)
CASES = [
    ("mlp-inplace-relu", nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)), (_x(3, 4),)),
    ("inplace-elu-silu-hardtanh", nn.Sequential(nn.Linear(4, 8), nn.ELU(inplace=True), nn.Linear(8, 8),
                                                nn.SiLU(inplace=True), nn.Linear(8, 8), nn.Hardtanh(inplace=True)),
     (_x(3, 4),)),
    ("activations", nn.Sequential(nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.Softplus(), nn.Mish(), nn.LeakyReLU(0.1),
                                  nn.PReLU(), nn.Softmax(-1), nn.LogSoftmax(-1)), (_x(3, 5),)),
    ("conv-bn-pool", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.AvgPool2d(2, ceil_mode=True),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten()), (_x(2, 3, 8, 8),)),
    ("convT-gn-upsample", nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.GroupNorm(2, 4), nn.GELU(),
                                        nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=1.5, mode="bilinear")),
     (_x(2, 3, 5, 5),)),
    ("pads-pixelshuffle", nn.Sequential(nn.ReflectionPad2d(1), nn.ReplicationPad2d((1, 0, 2, 1)), nn.ZeroPad2d(1),
                                        nn.Conv2d(3, 8, 3), nn.PixelShuffle(2), nn.InstanceNorm2d(2, affine=True)),
     (_x(2, 3, 5, 5),)),
    ("conv1d-adaptive-max", nn.Sequential(nn.Conv1d(3, 4, 3, dilation=2), nn.AdaptiveMaxPool1d(3),
                                          nn.MaxPool1d(2, ceil_mode=True)), (_x(2, 3, 12),)),
    ("embedding-layernorm", nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.RMSNorm(8), nn.Linear(8, 3)),
     (torch.randint(0, 10, (2, 5)),)),
    ("embedding-bag", nn.EmbeddingBag(10, 4, mode="max"), (torch.randint(0, 10, (3, 4)),)),
    ("bilinear", nn.Bilinear(3, 4, 2), (_x(5, 3), _x(5, 4))),
    ("lstm", nn.LSTM(4, 6, batch_first=True), (_x(2, 5, 4),)),
    ("gru-2-layers", nn.GRU(4, 6, num_layers=2), (_x(5, 2, 4),)),
    ("rnn-bidirectional", nn.RNN(4, 6, bidirectional=True), (_x(5, 2, 4),)),
    ("multihead-attention", nn.MultiheadAttention(8, 2, batch_first=True), (_x(2, 5, 8), _x(2, 5, 8), _x(2, 5, 8))),
    ("encoder-layer", nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), (_x(2, 5, 8),)),
    ("cross-entropy", nn.CrossEntropyLoss(label_smoothing=0.1), (_x(6, 4), torch.randint(0, 4, (6,)))),
    ("nll-ignore-index", nn.NLLLoss(ignore_index=1), (_x(6, 4).log_softmax(-1), torch.randint(0, 4, (6,)))),
    ("bce-with-logits", nn.BCEWithLogitsLoss(pos_weight=torch.rand(3, dtype=torch.float64)),
     (_x(4, 3), torch.rand(4, 3, dtype=torch.float64))),
    ("routed-mse-huber-l1", _Routed(), (_x(4, 3), _x(4, 3))),
]
IDS = [c[0] for c in CASES]


def _leaves(inputs):
    return [t.detach().clone().requires_grad_(t.is_floating_point() and i == 0) for i, t in enumerate(inputs)]


def _cost(model, inputs):
    out = model(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    return out.square().sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,module,inputs", CASES, ids=IDS)
def test_swapped_model_compiles_in_one_graph(name, module, inputs, device):
    twin = torchbp.swap(copy.deepcopy(module).double()).to(device)
    leaves = _leaves([t.to(device) for t in inputs])
    params = [p for p in twin.parameters() if p.requires_grad]
    wrt = [t for t in leaves if t.requires_grad] + params
    ref = torch.autograd.grad(_cost(twin, leaves), wrt)
    dynamo.reset()
    try:
        explained = dynamo.explain(lambda *a: _cost(twin, a))(*leaves)
        assert explained.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explained.break_reasons]
        # the δ Functions are in the graph as Functions (their backward traced), not bypassed
        assert any("autograd_function_apply" in g.code for g in explained.graphs)
        compiled = torch.compile(lambda *a: _cost(twin, a), backend="aot_eager")
        got = torch.autograd.grad(compiled(*leaves), wrt)
    finally:
        dynamo.reset()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "elu", "silu", "hardtanh", "leaky_relu"])
def test_inplace_activation_compiled_still_writes_its_input(name):
    """Under torch.compile an in-place δ activation runs out of place and writes back: the caller's
    tensor changes as native's in-place op changes it, and the gradient is native's."""
    import torch.nn.functional as F

    import torchbp.functional as tbf
    ours, native = getattr(tbf, name), getattr(F, name)
    z = _x(4, 5).requires_grad_()

    def f(fn, z):
        h = z * 1.5
        out = fn(h, inplace=True)
        return h, out.square().sum()

    dynamo.reset()
    try:
        assert dynamo.explain(f)(ours, z).graph_break_count == 0
        h, cost = torch.compile(f, backend="aot_eager")(ours, z)
    finally:
        dynamo.reset()
    h_ref, cost_ref = f(native, z)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(cost, z)[0], torch.autograd.grad(cost_ref, z)[0],
                               rtol=1e-12, atol=0)
