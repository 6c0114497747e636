"""Gradient checkpointing (torch.utils.checkpoint, both kinds; transformers' gradient checkpointing) with
swapped models and inside ``manual_backward``: the recompute that runs during backward goes through the
same δ formulas as the forward, and the gradients equal native autograd's without checkpointing."""
import contextlib
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import torchbp
from torchbp import registry
from torchbp.functional import DeltaFunction
from thirdparty import transformers
from util import DEVICES

REENTRANT = [pytest.param(False, id="non_reentrant"), pytest.param(True, id="reentrant")]
# how the subject runs: swapped; forward inside manual_backward, backward after it (the usual way);
# forward and backward both inside manual_backward
MODES = ["swap", "manual", "manual_inside"]


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        self.norm, self.drop = nn.BatchNorm1d(width), nn.Dropout(0.25)

    def forward(self, x):
        return x + self.drop(self.norm(self.fc2(self.act(self.fc1(x)))))


class Net(nn.Module):
    """Two checkpointed residual blocks and a head; ``use_reentrant=None`` runs without checkpointing."""

    def __init__(self, width=6, use_reentrant=None):
        super().__init__()
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.head = nn.Linear(width, 3)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        for block in self.blocks:
            x = block(x) if self.use_reentrant is None else checkpoint(block, x, use_reentrant=self.use_reentrant)
        return self.head(x)


def _net():
    torch.manual_seed(0)
    return Net().double()


def _delta_functions(cls=DeltaFunction):
    for sub in cls.__subclasses__():
        yield sub
        yield from _delta_functions(sub)


@pytest.fixture
def delta_calls(monkeypatch):
    """The δ Functions whose backward ran, one entry a call (a checkpointed layer's runs on its recompute)."""
    calls = []
    for cls in set(_delta_functions()):
        if "backward" in vars(cls):
            def counting(ctx, *grads, _backward=cls.backward, _name=cls.__name__):
                calls.append(_name)
                return _backward(ctx, *grads)
            monkeypatch.setattr(cls, "backward", staticmethod(counting))
    return calls


def _gradients(model, inputs, mode=None, call=None):
    """∂J/∂(inputs, parameters) for J = <v, model(inputs)>, with dropout's draws seeded; ``mode`` as MODES
    (None: native)."""
    call = call or (lambda m, x: m(x))
    leaves = [t for t in inputs if t.is_floating_point()]
    for t in leaves:
        t.requires_grad_()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    routing = torchbp.manual_backward() if mode in ("manual", "manual_inside") else contextlib.nullcontext()
    swapped = torchbp.swapped(model) if mode == "swap" else contextlib.nullcontext()
    with swapped:
        with routing:
            out = call(model, *inputs)
            v = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype).to(out.device)
            loss = (out * v).sum()
            if mode == "manual_inside":
                loss.backward()
        if mode != "manual_inside":
            loss.backward()
    grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
    grads.update((name, p.grad) for name, p in model.named_parameters() if p.requires_grad)
    for t in leaves:
        t.grad = None
    model.zero_grad(set_to_none=True)
    assert all(g is not None for g in grads.values()), [k for k, g in grads.items() if g is None]
    return grads


def _worst(ours, native):
    """Largest error, relative to the largest gradient of the same module (a bias before a BatchNorm has
    an exactly-zero gradient: both sides hold only rounding noise there), and where."""
    assert ours.keys() == native.keys()
    scale = {}
    for k, g in native.items():
        module = k.rpartition(".")[0]
        scale[module] = max(scale.get(module, 0.0), float(g.norm()))
    return max((float((ours[k] - native[k]).norm()) / scale[k.rpartition(".")[0]], k) for k in native)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reentrant", REENTRANT)
def test_checkpointed_gradients_equal_native_and_come_from_delta(mode, reentrant, device, delta_calls):
    model, x = _net().to(device), torch.randn(8, 6, dtype=torch.float64, device=device)
    native = _gradients(model, [x.clone()])
    assert delta_calls == []
    _gradients(model, [x.clone()], mode)
    unchecked = sorted(delta_calls)  # the δ backward calls without checkpointing
    assert unchecked.count("Linear") == 5 and "BatchNorm" in unchecked, unchecked
    delta_calls.clear()
    model.use_reentrant = reentrant
    ours = _gradients(model, [x.clone()], mode)
    # the recompute ran through the same routing as the forward: the same δ backward ran, nothing native
    assert sorted(delta_calls) == unchecked
    worst = _worst(ours, native)
    assert worst[0] <= 1e-10, worst
    # the model is left as it was: native classes, nothing routed afterwards
    assert not any(registry.native_for(type(m)) for m in model.modules())
    delta_calls.clear()
    _gradients(model, [x.clone()])
    assert delta_calls == []


@pytest.mark.parametrize("reentrant", REENTRANT)
def test_checkpoint_sequential_inside_manual_backward(reentrant, delta_calls):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.GELU(), nn.Linear(7, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    native = _gradients(seq, [x.clone()])
    _gradients(seq, [x.clone()], "manual")
    unchecked = sorted(delta_calls)
    assert unchecked.count("Linear") == 3 and {"Tanh", "GELU"} <= set(unchecked), unchecked
    delta_calls.clear()
    ours = _gradients(seq, [x.clone()], "manual",
                      call=lambda m, t: checkpoint_sequential(m, 2, t, use_reentrant=reentrant))
    assert sorted(delta_calls) == unchecked
    assert _worst(ours, native)[0] <= 1e-10


def test_routing_of_checkpoint_ends_with_manual_backward():
    """Outside manual_backward, checkpoint is torch's own again (and a recompute there stays native)."""
    import torch.utils.checkpoint as ckpt

    before = (ckpt.CheckpointFunction, ckpt._checkpoint_without_reentrant_generator)
    with torchbp.manual_backward():
        with torchbp.manual_backward():
            pass
    assert (ckpt.CheckpointFunction, ckpt._checkpoint_without_reentrant_generator) == before


@pytest.mark.parametrize("reentrant", REENTRANT)
def test_native_checkpoint_outside_routing_stays_native(reentrant, delta_calls):
    model, x = _net(), torch.randn(8, 6, dtype=torch.float64)
    native = _gradients(model, [x.clone()])
    model.use_reentrant = reentrant
    with torchbp.manual_backward():
        pass
    again = _gradients(model, [x.clone()])
    assert delta_calls == []
    assert _worst(again, native)[0] <= 1e-10


def _tiny_transformer(kind):
    tr = transformers()
    torch.manual_seed(0)
    if kind == "bert":
        cfg = tr.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.1,
                            attention_probs_dropout_prob=0.1)
        model = tr.BertModel(cfg, add_pooling_layer=False)
    else:
        cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.1,
                            embd_pdrop=0.1, attn_pdrop=0.1)
        model = tr.GPT2LMHeadModel(cfg)
    return model.double().train()  # checkpointing is on in training only; dropout's draws are replayed


def _enable_checkpointing(model, reentrant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the older name of activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.is_gradient_checkpointing


def _hidden(model, ids):
    out = model(input_ids=ids, use_cache=False, return_dict=True)  # checkpointing turns the cache off
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("mode", ["swap", "manual"])
@pytest.mark.parametrize("reentrant", REENTRANT)
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_transformers_gradient_checkpointing(kind, reentrant, mode, delta_calls):
    model = _tiny_transformer(kind)
    ids = torch.randint(0, 64, (2, 10))
    native = _gradients(model, [ids], call=_hidden)
    _gradients(model, [ids], mode, call=_hidden)
    unchecked = sorted(delta_calls)
    assert unchecked.count("LayerNorm") >= 4, unchecked
    delta_calls.clear()
    _enable_checkpointing(model, reentrant)
    ours = _gradients(model, [ids], mode, call=_hidden)
    assert sorted(delta_calls) == unchecked
    worst = _worst(ours, native)
    assert worst[0] <= 1e-10, worst


# -- the audit of a checkpointed model --------------------------------------------------------------------

class FunctionalBlock(nn.Module):
    """A block written partly in functional calls (F.gelu, F.linear on its own parameter): under
    checkpointing their δ formulas come only from the routing, in the forward and in the recompute."""

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, 2 * width)
        self.weight = nn.Parameter(torch.randn(width, 2 * width) / (2 * width) ** 0.5)

    def forward(self, x):
        return x + nn.functional.linear(nn.functional.gelu(self.fc(x)), self.weight)


def _functional_net(use_reentrant=None):
    torch.manual_seed(0)
    model = Net()
    model.blocks = nn.ModuleList([FunctionalBlock(6), FunctionalBlock(6)])
    model.use_reentrant = use_reentrant
    return model.double()


class PlantedGELU(torch.autograd.Function):
    """gelu with δ_x = 1.5 · δ f'(x): a wrong backward inside the checkpointed blocks."""

    @staticmethod
    def forward(x):
        return nn.functional.gelu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, delta):
        x, = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / 2 ** 0.5))
        pdf = torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
        return 1.5 * delta * (cdf + x * pdf)


@pytest.fixture
def planted_gelu():
    """F.gelu routed to PlantedGELU; the built-in route put back afterwards."""
    builtin = registry.function_for(nn.functional.gelu)
    torchbp.register(nn.functional.gelu, PlantedGELU)
    try:
        yield
    finally:
        registry.unregister(nn.functional.gelu)
        torchbp.register(nn.functional.gelu, builtin)
    assert registry.function_for(nn.functional.gelu) is builtin


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("state", ["native", "swapped", "inside_manual_backward"])
def test_audit_of_a_checkpointed_model(state, reentrant):
    x = torch.randn(8, 6, dtype=torch.float64)
    plain = torchbp.audit(_functional_net(), x, dtype=torch.float64)
    assert plain.ok and plain.coverage == 1.0, str(plain)
    model = _functional_net(use_reentrant=reentrant)
    if state == "swapped":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the blocks' own weight has no twin
            torchbp.swap(model)
    if state == "inside_manual_backward":
        with torchbp.manual_backward():
            report = torchbp.audit(model, x, dtype=torch.float64)
    else:
        report = torchbp.audit(model, x, dtype=torch.float64)
    assert report.ok and report.coverage == 1.0, str(report)
    # every layer inside the checkpointed blocks is compared, as without checkpointing
    assert {(r.layer, r.quantity) for r in report.rows} == {(r.layer, r.quantity) for r in plain.rows}


def test_audit_finds_a_wrong_backward_inside_a_non_reentrant_checkpoint(planted_gelu):
    model = _functional_net(use_reentrant=False)
    report = torchbp.audit(model, torch.randn(8, 6, dtype=torch.float64), dtype=torch.float64)
    assert not report.ok and report.first_divergence == "blocks.1", str(report)


@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_audit_finds_a_wrong_backward_inside_a_reentrant_checkpoint(planted_gelu, input_requires_grad):
    # without an input that requires grad, the reentrant kind gives its parameters no gradient in
    # training (native's too): the hooked passes run the segment inline, so it is still compared
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=input_requires_grad)
    report = torchbp.audit(_functional_net(use_reentrant=True), x, dtype=torch.float64)
    assert not report.ok and report.first_divergence == "blocks.1", str(report)


@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_audit_of_reentrant_checkpointed_modules_compares_every_layer(input_requires_grad):
    # Linear → GELU → Dropout → Linear → BatchNorm blocks: every layer gets its rows (a bias right before
    # a BatchNorm is judged against its layer's δ, which needs those rows), no false FAIL
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=input_requires_grad)
    plain = torchbp.audit(_net(), x)
    model = _net()
    model.use_reentrant = True
    report = torchbp.audit(model, x)
    assert report.ok and report.coverage == 1.0, str(report)
    assert {(r.layer, r.quantity) for r in report.rows} == {(r.layer, r.quantity) for r in plain.rows}
    unreached = report.environment.get("no_gradient_as_trained")
    if input_requires_grad:
        assert unreached is None
    else:  # said, not hidden: as trained no gradient reaches the checkpointed blocks, natively either
        assert unreached and all(n.startswith("blocks.") for n in unreached)
        assert "no gradient reaches" in report.verdict()
