"""What the audit runs, and that running less never verifies less: the subject's pass without hooks runs
exactly where the model trains otherwise than under the hooks (a fused container, a forward that reads
hooks, gradient checkpoints, a subject given with ``against``) and still FAILs a bug only that path has;
elsewhere the report says why it was not needed. The metrics' one-reduction path agrees with the chunked
one."""
import math

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint

import torchbp
from torchbp.checker import compare
from torchbp.checker.runner import AS_TRAINED_SKIPPED

from planted import wrong_linear_function

X = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def fused_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()


class Plain(nn.Module):
    """Linear, Tanh, Linear called one by one: nothing runs otherwise without hooks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.act, self.b = nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


_WrongWeight = wrong_linear_function(weight_scale=1.5)


class FastWhenUnwatched(nn.Linear):
    """A layer with a fast path taken only when no hook watches it, whose ∂J/∂W is planted wrong."""

    def forward(self, x):
        if not (self._forward_hooks or self._forward_pre_hooks):
            return _WrongWeight.apply(x, self.weight, self.bias)
        return super().forward(x)


def as_trained_rows(report):
    return [r for r in report.rows if r.quantity.endswith("(as trained)")]


def test_a_model_without_hook_dependent_code_skips_the_pass_and_says_why():
    r = torchbp.audit(Plain().double(), X)
    assert r.ok, str(r)
    assert r.environment["as_trained"] == AS_TRAINED_SKIPPED
    assert not as_trained_rows(r)
    assert r.to_dict()["environment"]["as_trained"].startswith("skipped:")


def test_a_fused_container_is_still_run_as_trained_and_its_planted_bug_fails(monkeypatch):
    from torchbp.functional.stack import DenseStack
    model = fused_mlp()
    r = torchbp.audit(model, X)
    assert r.ok and r.environment["as_trained"].startswith("run: runs otherwise without hooks: <root>"), \
        r.environment["as_trained"]
    original = DenseStack.backward

    def planted(ctx, delta):  # only the fused run is wrong: its weights' gradients 1.5×
        grads = list(original(ctx, delta))
        for i in range(3, len(grads), 2):
            grads[i] = None if grads[i] is None else 1.5 * grads[i]
        return tuple(grads)

    monkeypatch.setattr(DenseStack, "backward", staticmethod(planted))
    for oracle, dtype in (("always", None), ("auto", torch.float32), ("always", torch.float32)):
        bad = torchbp.audit(model, X, dtype=dtype, oracle=oracle)
        assert not bad.ok, (oracle, dtype, str(bad))
        assert as_trained_rows(bad) and all(row.quantity.endswith("(as trained)") for row in bad.failures)
        assert "only as trained" in bad.verdict()


def test_a_forward_that_reads_hooks_is_run_as_trained_and_its_fast_path_judged():
    torch.manual_seed(0)
    model = nn.Sequential(FastWhenUnwatched(8, 5), nn.Tanh()).double()
    r = torchbp.audit(model, X)
    assert r.environment["as_trained"].startswith("run: runs otherwise without hooks: 0"), r.environment
    assert not r.ok and ("0", "weight (as trained)") in {(row.layer, row.quantity) for row in r.failures}, str(r)


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.utils.checkpoint.checkpoint(lambda t: torch.tanh(self.a(t)), x, use_reentrant=False)
        return self.b(h)


def test_gradient_checkpoints_are_run_as_trained():
    r = torchbp.audit(Checkpointed().double(), X)
    assert r.ok, str(r)
    assert "gradient checkpoints" in r.environment["as_trained"], r.environment["as_trained"]


def test_a_subject_given_with_against_is_always_run_as_trained():
    sub, ref = Plain().double(), Plain().double()
    r = torchbp.audit(sub, X, against=ref)
    assert r.ok and r.environment["as_trained"] == "run: the subject's own code (against=)"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 1000, 70000, 200000])
def test_metrics_one_reduction_agrees_with_the_chunked_path(monkeypatch, dtype, n):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, dtype=torch.float64, generator=g).to(dtype)
    r = s.double() + 1e-3 * torch.randn(n, dtype=torch.float64, generator=g)
    whole = compare.metrics(s, r)
    monkeypatch.setattr(compare, "_CHUNK", 7)
    chunked = compare.metrics(s, r)
    for k in whole:
        assert math.isclose(whole[k], chunked[k], rel_tol=1e-12, abs_tol=1e-300), (k, whole[k], chunked[k])
    d = s.double() - r
    assert math.isclose(whole["rel_err"], float(d.norm() / r.norm()), rel_tol=1e-12)
    assert whole["max_abs_err"] == float(d.abs().max())


def _rows(report):
    return [(r.layer, r.quantity, r.status, r.sha256, r.rel_err, r.native_rel_err, r.tolerance, r.norm, r.ref_norm,
             r.max_abs_err, r.cosine) for r in report.rows]


@pytest.mark.parametrize("fused", [False, True])
def test_auto_oracle_judges_the_kept_subject_gradients_again_and_equals_always(monkeypatch, fused):
    """oracle="auto" where some gradient misses floor(dtype) against native: the oracle's verdict, row for
    row what oracle="always" gives, on the subject's gradients kept from its one hooked run where that run
    missed the floor."""
    from torchbp.checker import runner
    from torchbp.functional.stack import DenseStack
    from planted import WrongLinear
    torch.manual_seed(0)
    if fused:  # the bug only in the fused run: the as-trained judge's kept gradients are judged again too
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        original = DenseStack.backward

        def planted(ctx, delta):
            grads = list(original(ctx, delta))
            grads[3] = None if grads[3] is None else 1.5 * grads[3]
            return tuple(grads)
        monkeypatch.setattr(DenseStack, "backward", staticmethod(planted))
    else:
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), WrongLinear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    x = X.float()
    always = torchbp.audit(model, x, dtype=torch.float32, oracle="always")
    calls = []
    real = runner._subject_pass
    monkeypatch.setattr(runner, "_subject_pass", lambda *a: calls.append(1) or real(*a))
    auto = torchbp.audit(model, x, dtype=torch.float32, oracle="auto")
    assert not always.ok and not auto.ok and auto.environment["oracle"] == "float64"
    # unfused: the hooked pass missed the floor, its kept gradients were judged again (one run); fused:
    # only the pass as trained missed it, the hooked pass's gradients were not kept, both passes ran again
    assert len(calls) == (2 if fused else 1)
    assert all(r.native_rel_err is not None for r in auto.rows)
    assert _rows(auto) == _rows(always)
    assert auto.first_divergence == always.first_divergence
    assert any(r.quantity.endswith("(as trained)") for r in auto.failures) == fused


def test_the_default_loss_gives_the_oracle_the_same_v_whichever_pass_runs_first():
    """<v, output>'s v is rounded to the audit dtype even when the float64 oracle's pass (float64
    throughout) draws it first: the δ arriving at the output agrees exactly, and no upgrade is reported
    for the audit's own rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    for oracle in ("always", "auto"):
        r = torchbp.audit(model, X.float(), dtype=torch.float32, oracle=oracle)
        assert r.ok and "float64_upgraded" not in r.environment, r.environment.get("float64_upgraded")
        root = next(row for row in r.rows if row.layer == "" and row.quantity == "grad_output")
        assert root.rel_err == 0.0, root


def _graph_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


@pytest.mark.parametrize("routed", [False, True])
def test_an_inplace_activation_is_hooked_without_an_alias_of_its_input(routed):
    """An activation that writes over its input (``inplace=True``) gets no hooked alias of the input:
    an in-place op on an alias is recorded as a copy into the aliased memory (CopySlices: a clone and
    strided copies of every gradient in backward). Its grad_input is still captured, the same δ that
    arrives at the layer before it."""
    from torchbp.checker.capture import Capture
    from torchbp.checker.passes import routing
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3),
                          nn.Hardswish(inplace=True)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    got = []
    with routing(model) if routed else torch.enable_grad(), Capture(model, lambda *a: got.append(a[:2])) as cap:
        out = model(x)
    cap.resolve()
    nodes = _graph_nodes(out)
    assert "CopySlices" not in nodes, nodes
    out.sum().backward()
    cap.remove_tensor_hooks()
    assert {("2", "grad_input"), ("1", "grad_output"), ("4", "grad_input"), ("3", "grad_output")} <= set(got)
    r = torchbp.audit(model, x)
    assert r.ok, str(r)
    rows = {(row.layer, row.quantity): row for row in r.rows}
    assert rows[("2", "grad_input")].sha256 == rows[("1", "grad_output")].sha256
    assert rows[("4", "grad_input")].sha256 == rows[("3", "grad_output")].sha256


def test_passes_over_a_converted_copy_restore_it_from_the_original_not_from_clones(monkeypatch):
    """The default audit of a float32 model works on a float64 copy; each pass restores the copy's
    parameters and buffers from the original (converted as the copy was), so no clone of the model is
    held through a pass; what a forward changes (a parameter clamped in place, a buffer reassigned, running
    statistics) is still undone bit for bit."""
    from torchbp.checker import state

    class Mutating(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(8, 6), nn.BatchNorm1d(6)
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            with torch.no_grad():
                self.lin.weight.clamp_(-0.1, 0.1)
            self.steps = self.steps + 1
            return torch.tanh(self.bn(self.lin(x)))

    torch.manual_seed(0)
    model = Mutating()
    originals = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    states = []
    real = state.ModelState.__init__

    def record(self, m, source=None):
        real(self, m, source)
        states.append(self)
    monkeypatch.setattr(state.ModelState, "__init__", record)
    r = torchbp.audit(model, X.float())
    assert r.ok and r.environment["dtype"] == "float64", str(r)
    assert len(states) >= 2
    for s in states:
        assert all(id(v) in originals for _, v in s.values), "a pass cloned the model's tensors"
    copy = state.converted_copy(model, torch.float64, torch.device("cpu"))
    held = {n: t for n, t in list(copy.named_parameters()) + list(copy.named_buffers())}
    s = state.ModelState(copy, model)
    copy(X)
    copy(X)
    assert int(copy.steps) == 2 and held["steps"] is not copy.steps
    s.restore()
    for n, t in list(copy.named_parameters()) + list(copy.named_buffers()):
        assert t is held[n], n
        assert torch.equal(t, dict(list(model.named_parameters()) + list(model.named_buffers()))[n].to(t.dtype)), n


@pytest.mark.parametrize("fused", [False, True])
def test_parameter_references_are_kept_through_the_hooked_pass_only_for_a_pass_as_trained(monkeypatch, fused):
    """The reference's parameter gradients are kept past their judging only where a pass as trained
    follows (it judges its own against them); elsewhere each goes the moment it is judged (known from the
    hooked pass's forward, before its backward), and the verdict is the same."""
    from torchbp.checker import judging
    held = []
    real = judging.Judge._judge

    def spy(self, k, subject, reference):
        if judging._is_parameter(k[1]) and self.hooked is None:  # the hooked pass's judge
            held.append(len(self.parameter_refs))
        return real(self, k, subject, reference)
    monkeypatch.setattr(judging.Judge, "_judge", spy)
    model = fused_mlp() if fused else Plain().double()
    r = torchbp.audit(model, X)
    assert r.ok, str(r)
    assert held and (all(held) if fused else not any(held)), held
    assert r.environment["as_trained"].startswith("run:" if fused else "skipped:")


def test_parameter_gradients_are_judged_as_backward_produces_them(monkeypatch):
    """Each parameter's gradient reaches the judge when backward has it (between the δs), not all at
    once after the backward, when every one of them would be alive together."""
    from torchbp.checker import judging
    order = []
    real = judging.Judge._judge
    monkeypatch.setattr(judging.Judge, "_judge", lambda self, k, s, r: order.append(k) or real(self, k, s, r))
    r = torchbp.audit(Plain().double(), X)
    assert r.ok, str(r)
    params = [i for i, (_, q) in enumerate(order) if judging._is_parameter(q)]
    deltas = [i for i, (_, q) in enumerate(order) if not judging._is_parameter(q)]
    assert ("b", "weight") in order and params[0] < deltas[-1], order
