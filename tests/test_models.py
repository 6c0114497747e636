"""Models people did not write for torchbp: torchvision's ResNet and Hugging Face BERT/GPT-2, when those
packages happen to be installed (skipped otherwise; neither is a dependency). Every parameter's gradient
must come from δ formulas (coverage 1.0) and agree with native autograd in float64."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import torchbp
from util import DEVICES


def _grads(model, inputs, loss_fn, routed):
    model.zero_grad(set_to_none=True)
    ctx = torchbp.manual_backward() if routed else warnings.catch_warnings()
    with ctx:
        loss = loss_fn(model(**inputs) if isinstance(inputs, dict) else model(inputs))
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
    manual = copy.deepcopy(native)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchbp.swap(manual)
    gn = _grads(native, inputs, loss_fn, routed=False)
    gm = _grads(manual, inputs, loss_fn, routed=True)
    assert gn.keys() == gm.keys()
    # relative to the largest gradient of the same layer: an attention key's bias has an exactly-zero
    # gradient (softmax ignores a per-query constant), where both sides hold only rounding noise
    scale = {}
    for k, g in gn.items():
        mod = k.rpartition(".")[0]
        scale[mod] = max(scale.get(mod, 0.0), float(g.norm()))
    worst = max((float((gm[k] - gn[k]).norm()) / scale[k.rpartition(".")[0]], k) for k in gn)
    assert worst[0] <= 1e-10, worst


@pytest.mark.parametrize("device", DEVICES)
def test_torchvision_resnet18(device):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).double().to(device)
    # 64x64: layer4's BatchNorm sees 4 x 2 x 2 values per channel (at batch 2 and 1x1 it would normalise
    # two values to ±1, whose δ_x is exactly 0: rounding noise on both sides, nothing to compare)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64, device=device)
    assert torchbp.unswappable(model) == []
    r = torchbp.audit(model, x)
    assert r.ok and r.coverage == 1.0, str(r)
    _same_gradients(model, x, _projection())


def _tiny(kind):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "bert":
        cfg = tr.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=32, **common)
        model = tr.BertModel(cfg)
    else:
        cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)
        model = tr.GPT2LMHeadModel(cfg)
    return model


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("device", DEVICES)
def test_transformers_models(kind, device):
    model = _tiny(kind).double().to(device).eval()  # eval: no dropout; gradients still flow
    ids = torch.randint(0, 64, (2, 12), device=device)

    def first(out):
        return out[0] if isinstance(out, tuple) else (out.logits if hasattr(out, "logits") else out.last_hidden_state)

    class Wrapped(torch.nn.Module):  # the audit wants a tensor (or tensors) out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return first(self.m(input_ids=input_ids, return_dict=True))

    w = Wrapped(model)
    r = torchbp.audit(w, ids)
    assert r.ok, str(r)
    assert r.coverage == 1.0, str(r)
    _same_gradients(w, ids, _projection())
