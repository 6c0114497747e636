"""torchbp.audit's verdict means what it says: the reference is native autograd whatever state the
model and the caller are in, the code that training runs is judged, what was not compared is said,
lower-precision islands and the model's own randomness give no false FAIL, and the audit changes
nothing (buffers reassigned, parameters changed in place, lazy modules, generators)."""
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import torchbp
from torchbp.functional._common import DeltaFunction

from planted import PlantedTanh, WrongLinear


def mlp(*widths, act=nn.Tanh, dtype=torch.float64):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def planted_cube(x):
    """A user's function that opts into torch's function modes (so manual_backward can route it)."""
    if torch.overrides.has_torch_function((x,)):
        return torch.overrides.handle_torch_function(planted_cube, (x,), x)
    return x * x * x


class _WrongCube(DeltaFunction):
    @staticmethod
    def forward(x):
        return x * x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        return 2 * delta * x * x  # should be 3 x²


torchbp.register(planted_cube, _WrongCube)


class Cube(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x):
        return planted_cube(self.lin(x))


X = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# --- the reference is native autograd -----------------------------------------------------------------

def test_already_swapped_model_is_audited_against_native():
    torch.manual_seed(0)
    model = mlp(8, 8, 8, 3)
    model[1] = PlantedTanh()
    torchbp.swap(model)
    classes = [type(m) for m in model.modules()]
    r = torchbp.audit(model, X)
    assert not r.ok and r.first_divergence == "1", str(r)
    assert [type(m) for m in model.modules()] == classes  # still swapped, exactly as found
    assert r.environment["native_reference_for_swapped"]


def test_inside_callers_manual_backward_the_reference_is_native():
    torch.manual_seed(0)
    model = Cube().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with torchbp.manual_backward():
        r = torchbp.audit(model, x)
    assert not r.ok and r.first_divergence == "", str(r)
    assert "first divergence: '<root>'" in r.verdict()
    assert r.environment["caller_modes_suspended_for_reference"]


def test_a_model_that_routes_itself_is_refused():
    class SelfRouting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5)

        def forward(self, x):
            with torchbp.manual_backward():
                return torch.tanh(self.lin(x))

    with pytest.raises(RuntimeError, match="reference pass .* ran torchbp δ Functions"):
        torchbp.audit(SelfRouting().double(), torch.randn(3, 5, dtype=torch.float64))


# --- the code that training runs is judged ------------------------------------------------------------

def test_fused_dense_stack_is_judged_as_trained(monkeypatch):
    from torchbp.functional.stack import DenseStack
    torch.manual_seed(0)
    model = mlp(8, 16, 16, 3)
    assert torchbp.audit(model, X).ok
    original = DenseStack.backward

    def planted(ctx, delta):
        grads = list(original(ctx, delta))
        for i in range(3, len(grads), 2):  # the weights' gradients (params alternate W, b)
            grads[i] = None if grads[i] is None else 1.5 * grads[i]
        return tuple(grads)

    monkeypatch.setattr(DenseStack, "backward", staticmethod(planted))
    with torchbp.swapped(model):  # the plant is live where training runs: swapped, no hooks
        model(X).sum().backward()
    assert getattr(DenseStack.backward, "__name__", "") == "planted"
    model.zero_grad(set_to_none=True)
    r = torchbp.audit(model, X)
    assert not r.ok, str(r)
    failing = {(row.layer, row.quantity) for row in r.failures}
    assert ("0", "weight (as trained)") in failing and all(q.endswith("(as trained)") for _, q in failing)
    assert r.first_divergence == "" and "only as trained" in r.verdict()  # the Sequential that fused them


def test_a_half_precision_fast_path_is_reached_by_an_audit_in_that_dtype(monkeypatch):
    """A path chosen by dtype (the CPU's half-precision ∂J/∂W of a convolution) is judged by an audit
    in that dtype; the float64 audit cannot see it, and need not pretend to."""
    from torchbp.functional.fastpath import conv as fast
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    x = torch.randn(4, 3, 6, 6)
    original = fast.weight_grad_gemm

    def planted(a, *args, **kwargs):
        gw = original(a, *args, **kwargs)
        return 1.5 * gw if a.dtype == torch.bfloat16 else gw  # a bug in the half-precision branch only

    monkeypatch.setattr(fast, "weight_grad_gemm", planted)
    assert torchbp.audit(model, x).ok
    r = torchbp.audit(model, x, dtype=torch.bfloat16)
    assert not r.ok and r.first_divergence == "0", str(r)


class _ScaleFunction(torch.autograd.Function):
    """A user's own Function (not a DeltaFunction): its weight gradient is 3× off."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, 3 * (g * x).sum(0)


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return torch.ops.aten.mul.Tensor(x, self.weight)


@torchbp.register(Scale)
class _ScaleTwin(Scale):
    def forward(self, x):
        return _ScaleFunction.apply(x, self.weight)


def test_a_twins_own_function_is_judged_not_native():
    model = nn.Sequential(nn.Linear(8, 4), Scale(4), nn.Linear(4, 2)).double()
    r = torchbp.audit(model, X)
    row = next(row for row in r.rows if row.layer == "1" and row.quantity == "weight")
    assert row.status == "fail" and not r.ok, str(r)


# --- what was not compared is said ---------------------------------------------------------------------

def test_gradients_zero_on_both_sides_are_named_in_the_verdict():
    torch.manual_seed(0)
    model = mlp(8, 8, 8, 3)
    nn.init.zeros_(model[-1].weight)  # a zero-initialised head: every other gradient is exactly 0
    r = torchbp.audit(model, X)
    assert r.ok
    assert "exactly zero on both sides" in r.verdict() and "0 weight" in r.verdict()
    assert {row.layer for row in r.zero_rows} >= {"0", "2"}
    assert "zero" in r.table(full=True)


def test_scaled_tolerances_are_marked_with_a_legend():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
    r = torchbp.audit(model, X)
    assert r.ok
    bias = next(row for row in r.rows if row.layer == "0" and row.quantity == "bias")
    assert bias.scaled and bias.tolerance_scale >= 10  # ∑ δ over the batch cancels before BatchNorm
    table = r.table(full=True)
    assert "ok*" in table and "for cancellation" in table
    assert "ok* (tolerance scaled" in r.verdict()


# --- no false FAIL ---------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, bug):
        super().__init__()
        self.q = WrongLinear(8, 8) if bug else nn.Linear(8, 8)
        self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


class Block(nn.Module):
    def __init__(self, bug=False):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(8, 16), Attention(bug), nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x).view(2, 3, 16)[..., :8]  # q, k and v read the same view
        return self.out(self.attn(h))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_each_grad_input_row_is_the_modules_own_share(dtype):
    torch.manual_seed(0)
    model = Block(bug=True).double()
    r = torchbp.audit(model, torch.randn(6, 8, dtype=torch.float64), dtype=dtype)
    assert not r.ok and r.first_divergence == "attn.q", str(r)
    status = {(row.layer, row.quantity): row.status for row in r.rows}
    assert status[("attn.q", "grad_input")] == "fail"
    assert status[("attn.k", "grad_input")] == status[("attn.v", "grad_input")] == "ok"

class Islands(nn.Module):
    """Parts computed below float64 on purpose, as transformers' models do."""

    def __init__(self):
        super().__init__()
        self.q, self.out = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        scores = self.q(x) @ x.transpose(-1, -2)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
        return self.out(probs @ x)


def test_float32_islands_in_a_float64_audit_are_upgraded_and_named():
    torch.manual_seed(0)
    model = Islands().double()
    r = torchbp.audit(model, X, loss_fn=lambda out, _: out.float().logsumexp(-1).mean())
    assert r.ok, str(r)
    assert r.worst_rel_err <= 1e-10
    upgraded = r.environment["float64_upgraded"]
    assert "Tensor.float" in upgraded and any(u.startswith("softmax(dtype=float32)") for u in upgraded)
    assert "float64 throughout" in r.verdict()


class Noisy(nn.Module):
    """Draws from its own generator, numpy's and Python's global state in forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.gen = torch.Generator().manual_seed(7)

    def forward(self, x):
        noise = torch.rand(x.shape[-1], generator=self.gen, dtype=x.dtype)
        scale = float(np.random.rand()) + random.random()
        return torch.tanh(self.lin(x) * noise * scale)


def test_model_owned_generators_numpy_and_python_random_are_shared_and_restored():
    model = Noisy().double()
    gen_state, py_state = model.gen.get_state(), random.getstate()
    np_state = np.random.get_state()
    r = torchbp.audit(model, X)
    assert r.ok, str(r)
    assert torch.equal(model.gen.get_state(), gen_state)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


_OUTSIDE = torch.Generator().manual_seed(3)  # a generator the model does not hold: the audit cannot find it


class OutsideNoise(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.act = nn.Linear(8, 8), nn.Tanh()

    def forward(self, x):
        return self.act(self.lin(x) * torch.rand(8, generator=_OUTSIDE, dtype=x.dtype))


def test_randomness_the_audit_cannot_share_is_named_not_blamed_on_a_layer():
    r = torchbp.audit(OutsideNoise().double(), X)
    assert not r.ok and r.first_divergence is None, str(r)
    assert "forward results differ" in r.verdict() and "no layer is blamed" in r.verdict()


# --- the audit changes nothing ---------------------------------------------------------------------------

class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x):
        with torch.no_grad():
            self.lin.weight.clamp_(-0.1, 0.1)             # a parameter changed in place
        y = self.lin(x)
        self.steps = self.steps + 1                       # reassigned, not updated in place
        self.ema = 0.9 * self.ema + 0.1 * y.detach().mean(0)
        return torch.tanh(y)


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_buffers_reassigned_and_parameters_changed_in_place_are_restored(dtype):
    torch.manual_seed(0)
    model = Counting().double()
    emb = nn.Embedding(10, 8, max_norm=0.5).double()     # renormalises looked-up rows in place
    whole = nn.ModuleDict({"emb": emb, "body": model})

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = whole

        def forward(self, idx):
            return self.parts["body"](self.parts["emb"](idx))

    wrapper = Wrapper()
    held = {n: t for n, t in list(wrapper.named_parameters()) + list(wrapper.named_buffers())}
    values = {n: t.detach().clone() for n, t in held.items()}
    r = torchbp.audit(wrapper, torch.tensor([[1, 2, 3], [4, 5, 1]]), dtype=dtype)
    assert r.ok, str(r)
    now = dict(list(wrapper.named_parameters()) + list(wrapper.named_buffers()))
    assert now.keys() == held.keys()
    for n, t in now.items():
        assert t is held[n], n                            # the same tensor objects
        assert torch.equal(t, values[n]), n               # bit for bit


def test_lazy_module_is_not_materialised_and_all_sides_share_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(4, 5)
    r = torchbp.audit(model, x, dtype=torch.float32)
    assert r.ok and r.worst_rel_err < 1e-4, str(r)
    assert isinstance(model[0], nn.LazyLinear) and model[0].has_uninitialized_params()
    r64 = torchbp.audit(model, x)
    assert r64.ok and r64.worst_rel_err <= 1e-10 and model[0].has_uninitialized_params()


def test_models_that_cannot_be_deep_copied_are_audited():
    import torch.nn.utils.prune as prune
    torch.manual_seed(0)
    pruned = mlp(8, 8, 3, dtype=torch.float32)
    prune.l1_unstructured(pruned[0], "weight", amount=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy weight_norm is deprecated
        normed = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(8, 8)), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(4, 8)
    for model in (pruned, normed):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        r = torchbp.audit(model, x)  # a float64 copy of a float32 model
        assert r.ok and r.environment["dtype"] == "float64", str(r)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert torchbp.audit(model.double(), x.double(), dtype=torch.float32).ok
        model.float()


# --- arguments and defaults ------------------------------------------------------------------------------

def test_default_dtype_is_float64():
    model = mlp(8, 4, 2, dtype=torch.float32)
    r = torchbp.audit(model, X.float())
    assert r.environment["dtype"] == "float64" and r.ok
    assert next(model.parameters()).dtype == torch.float32


def test_default_loss_with_an_empty_batch():
    model = mlp(8, 4, 2)
    r = torchbp.audit(model, X[:0], torch.zeros(0, 2, dtype=torch.float64))
    assert r.ok, str(r)
    assert torchbp.audit(model, X[:0]).ok


def test_bad_arguments_are_named():
    model = mlp(8, 4, 2)
    with pytest.raises(ValueError, match="repeat"):
        torchbp.audit(model, X, repeat=-1)
    with pytest.raises(ValueError, match="seed"):
        torchbp.audit(model, X, seed=2 ** 70)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        torchbp.audit(model, X)


# --- gradient checkpointing --------------------------------------------------------------------------------

class Checkpointed(nn.Module):
    def __init__(self, reentrant, bug=False):
        super().__init__()
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Linear(8, 8), PlantedTanh() if bug else nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_gradient_checkpointing_is_audited(reentrant):
    torch.manual_seed(0)
    x = X.clone().requires_grad_(reentrant)  # reentrant checkpointing needs an input that requires grad
    model = Checkpointed(reentrant).double()
    model.head.weight.grad = torch.ones_like(model.head.weight)  # a .grad that must survive; others None
    r = torchbp.audit(model, x)
    assert r.ok and r.coverage == 1.0, str(r)
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight)) and x.grad is None
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    bad = torchbp.audit(Checkpointed(reentrant, bug=True).double(), x)
    assert not bad.ok and bad.first_divergence.startswith("block"), str(bad)


class _TwoOutputs(torch.autograd.Function):
    """(2x, 3x), with undefined gradients left None (materialize_grads off), as several δ Functions do."""

    @staticmethod
    def forward(x):
        return x * 2, x * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, da, db):
        return sum(c * d for c, d in ((2, da), (3, db)) if d is not None)


class _Pair(nn.Module):
    def forward(self, x):
        return _TwoOutputs.apply(x)


def test_an_output_no_gradient_reaches_is_not_a_crash():
    # the pair's second output is hooked but unused: its hook fires with None
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.pair = nn.Linear(3, 3).double(), _Pair()

        def forward(self, x):
            return self.pair(self.fc(x))[0]

    report = torchbp.audit(Net(), torch.randn(2, 3, dtype=torch.float64))
    assert report.ok, str(report)
    assert {r.quantity for r in report.rows if r.layer == "pair"} == {"grad_input", "grad_output[0]"}
