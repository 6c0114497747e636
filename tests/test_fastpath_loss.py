"""fastpath.loss against the plain formulas of functional/loss/ it replaces, in every floating dtype:

- ``cross_entropy_delta_unweighted`` against ``classification.cross_entropy_delta`` on both sides of each of
  its branches (no target ignored / some / all, an empty batch; the count from forward or not; in place or
  recording a graph; traced or not);
- CrossEntropy's backward, which takes the fast path where it applies, against the plain formula with class
  weights, ignore_index, label smoothing, every reduction, 1-D / 2-D / N-D input;
- ``add_at`` in place and not;
- the common call's guard ``cross_entropy_call_is_common``: it may skip cross_entropy's checks only where they
  pass and change nothing;
- ``triplet_pn_deltas_in_place`` against ``margin.triplet_pn_deltas``, and which of them backward takes.
"""
import pytest
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from torchbp.functional.fastpath import loss as fp
from torchbp.functional.loss import classification as cls
from torchbp.functional.loss import margin
from util import FLOOR, rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SHAPES = {"1d": (7,), "2d": (12, 7), "nd": (4, 7, 3, 2), "empty": (0, 7)}  # class dim: 0 for 1-D, else 1
_NLL_FORWARD = torch.ops.aten.nll_loss_forward.default


def _case(shape, ignored, ignore_index, dtype, device, seed=0):
    """logits z, log-probabilities logp = log_softmax(z) in ``dtype``, targets y with none / some / all of them
    ``ignore_index``, and δ_J."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    C = shape[0] if len(shape) == 1 else shape[1]
    yshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = torch.randint(0, C, yshape, generator=gen)
    if ignored == "some":
        y = torch.where(torch.rand(yshape, generator=gen) < 0.4, torch.tensor(ignore_index), y)
        y.view(-1)[0] = ignore_index  # at least one ignored
        y.view(-1)[-1] = (ignore_index + 1) % C  # and at least one kept
    elif ignored == "all":
        y = torch.full(yshape, ignore_index)
    elif ignore_index in range(C):  # "none": no target equals a class-valued ignore_index
        y = torch.where(y == ignore_index, (ignore_index + 1) % C, y)
    z = z.to(device, dtype)
    logp = torch.log_softmax(z, 0 if len(shape) == 1 else 1)
    g = torch.tensor(-1.3, dtype=dtype, device=device)
    return z, logp, y.to(device), g


def _total(logp, y, ignore_index, reduction):
    """The count forward hands backward: torch's kernel's total weight for 1-D / 2-D input, None for N-D."""
    if logp.dim() > 2:
        return None
    return _NLL_FORWARD(logp, y, None, {"mean": 1, "sum": 2}[reduction], ignore_index)[1]


def _assert_close(fast, plain, oracle, dtype):
    """float64: to 1e-12 (NaN where the other is NaN); lower precision: err(fast, float64 oracle) within
    2·err(plain) + floor(dtype)."""
    assert fast.shape == plain.shape and fast.dtype == plain.dtype
    if dtype == torch.float64:
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-300, equal_nan=True)
        return
    ef, ep = rel_err(fast, oracle), rel_err(plain, oracle)
    assert ef <= 2 * ep + FLOOR[dtype], f"err {ef:.3e} vs plain {ep:.3e} ({dtype})"


@pytest.fixture
def keep_branch_calls(monkeypatch):
    """Counts calls of scale_ in fastpath.loss: the keep-mask branch makes one, the count-read branch none."""
    calls = []
    real = fp.scale_

    def spy(t, s):
        calls.append(1)
        return real(t, s)
    monkeypatch.setattr(fp, "scale_", spy)
    return calls


# --- cross_entropy_delta_unweighted = cross_entropy_delta(w=None, ε=0) ---------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mode", ["in place", "graph", "traced", "no count"])
def test_unweighted_delta_is_the_plain_formula(device, dtype, shape, ignored, ignore_index, reduction, mode,
                                               monkeypatch, keep_branch_calls):
    if shape in ("1d", "empty") and ignored == "some":
        pytest.skip("one target or none: none or all of them ignored")
    z, logp, y, g = _case(SHAPES[shape], ignored, ignore_index, dtype, device)
    total = None if mode == "no count" else _total(logp, y, ignore_index, reduction)
    if mode == "traced":
        monkeypatch.setattr(fp, "compiling", lambda: True)
    grad_mode = torch.enable_grad() if mode == "graph" else torch.no_grad()
    with grad_mode:
        fast = fp.cross_entropy_delta_unweighted(g, logp.clone(), y, total, reduction, ignore_index)
        reads_count = (mode == "in place" and device == "cpu" and total is not None and ignored == "none"
                       and y.numel() > 0)
        assert len(keep_branch_calls) == (0 if reads_count else 1)  # the branch taken is the one expected
        plain = cls.cross_entropy_delta(g, logp, y, None, 0.0, reduction, ignore_index)
        oracle = cls.cross_entropy_delta(g.double(), logp.double(), y, None, 0.0, reduction, ignore_index)
    _assert_close(fast, plain, oracle, dtype)
    if ignored == "all":  # ignored rows are exactly 0, also for an all-ignored "mean" (δ_J / 0)
        assert torch.equal(fast, torch.zeros_like(fast))


def test_count_read_is_exact_at_the_target():
    """The count-read branch writes p·s − s at the target (native's order) and p·s elsewhere, in float64 bit for
    bit equal to the plain formula."""
    z, logp, y, g = _case((64, 10), "none", -100, torch.float64, "cpu", seed=3)
    with torch.no_grad():
        fast = fp.cross_entropy_delta_unweighted(g, logp, y, _total(logp, y, -100, "mean"), "mean", -100)
        plain = cls.cross_entropy_delta(g, logp, y, None, 0.0, "mean", -100)
    assert torch.equal(fast, plain)


# --- CrossEntropy's backward (the fast path where it applies) = the plain formula, every argument ----------

def _delta_through_backward(z, y, w, ignore_index, reduction, eps, create_graph=False):
    z = z.detach().requires_grad_()
    loss = tbf.cross_entropy(z, y, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    g = torch.linspace(-1.5, 1.0, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    (d,) = torch.autograd.grad(loss, z, g, create_graph=create_graph)
    return d, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weights"])
@pytest.mark.parametrize("eps", [0.0, 0.2], ids=["eps0", "smoothing"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["first-order", "create_graph"])
def test_backward_is_the_plain_formula(device, dtype, shape, ignored, reduction, weighted, eps, create_graph):
    if shape in ("1d", "empty") and ignored == "some":
        pytest.skip("one target or none: none or all of them ignored")
    if create_graph and dtype in (torch.bfloat16, torch.float16):
        pytest.skip("the graph-recording side once per float64 / float32 is enough (the same branch)")
    ignore_index = 2
    z, _, y, _ = _case(SHAPES[shape], ignored, ignore_index, dtype, device, seed=1)
    C = z.shape[0 if z.dim() == 1 else 1]
    w = torch.linspace(0.5, 2.0, C, dtype=dtype, device=device) if weighted else None
    d, g = _delta_through_backward(z, y, w, ignore_index, reduction, eps, create_graph)
    logp = torch.log_softmax(z, 0 if z.dim() == 1 else 1)
    plain = cls.cross_entropy_delta(g, logp, y, w, eps, reduction, ignore_index)
    oracle = cls.cross_entropy_delta(g.double(), logp.double(), y, None if w is None else w.double(), eps,
                                     reduction, ignore_index)
    _assert_close(d.detach(), plain, oracle, dtype)
    # and native's gradient (float64 only: the low-precision rule is test_loss's)
    if dtype == torch.float64 and not (ignored == "all" and reduction == "mean"):
        zn = z.detach().requires_grad_()
        ln = F.cross_entropy(zn, y, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
        (dn,) = torch.autograd.grad(ln, zn, g)
        torch.testing.assert_close(d.detach(), dn, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("w, eps, reduction, applies", [
    (None, 0.0, "mean", True), (None, 0.0, "sum", True), (None, 0.0, "none", False),
    (torch.ones(3), 0.0, "mean", False), (None, 0.1, "mean", False), (None, 0.1, "sum", False)])
def test_fast_path_applies_exactly_where_it_computes_the_delta(w, eps, reduction, applies, monkeypatch):
    assert fp.cross_entropy_delta_applies(w, eps, reduction) == applies
    took = []
    real_fast, real_plain = fp.cross_entropy_delta_unweighted, cls.cross_entropy_delta
    monkeypatch.setattr(fp, "cross_entropy_delta_unweighted", lambda *a: took.append("fast") or real_fast(*a))
    monkeypatch.setattr(cls, "cross_entropy_delta", lambda *a: took.append("plain") or real_plain(*a))
    z = torch.randn(5, 3, dtype=torch.float64)
    _delta_through_backward(z, torch.tensor([0, 1, 2, 1, 0]), w if w is None else w.double(), -100, reduction, eps)
    assert took == (["fast"] if applies else ["plain"])


# --- add_at ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_add_at_in_place_only_without_a_graph(dtype):
    delta = torch.randn(6, 4, dtype=torch.float64).to(dtype)
    index = torch.tensor([[0], [3], [1], [1], [2], [0]])
    src = torch.randn(6, 1, dtype=torch.float64).to(dtype)
    expected = delta.scatter_add(1, index, src)
    with torch.enable_grad():
        before = delta.clone()
        out = fp.add_at(delta, 1, index, src)
        assert out is not delta and torch.equal(delta, before)
        assert torch.equal(out, expected)
    with torch.no_grad():
        out = fp.add_at(delta, 1, index, src)
        assert out is delta and torch.equal(out, expected)


# --- the common call's guard -----------------------------------------------------------------------------

def _calls():
    z = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    common = dict(input=z, target=y)
    yield "common", common, True
    yield "sum", dict(common, reduction="sum"), True
    yield "ignore_index", dict(common, ignore_index=1), True
    yield "float32", dict(common, input=z.float()), True
    yield "none", dict(common, reduction="none"), False
    yield "weights", dict(common, weight=torch.rand(4, dtype=torch.float64)), False
    yield "smoothing", dict(common, label_smoothing=0.1), False
    yield "legacy size_average", dict(common, size_average=False), False
    yield "legacy reduce", dict(common, reduce=False), False
    yield "bad reduction", dict(common, reduction="avg"), False
    yield "int32 target", dict(common, target=y.int()), False
    yield "uint8 target", dict(common, target=y.to(torch.uint8)), False
    yield "probability target", dict(common, target=torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)), False
    yield "short target", dict(common, target=y[:5]), False
    yield "2-D target", dict(common, target=y.reshape(2, 3)), False
    yield "(N, 1) target", dict(common, target=y.reshape(6, 1)), False
    yield "1-D input", dict(input=z[0], target=y[0]), False
    yield "N-D input", dict(input=z.reshape(6, 4, 1), target=y.reshape(6, 1)), False
    yield "integer input", dict(common, input=z.long()), False
    yield "parameter input", dict(common, input=torch.nn.Parameter(z.clone())), False


def _outcome(kw):
    kw = {k: v.detach().clone().requires_grad_() if k == "input" and v.is_floating_point()
          and not isinstance(v, torch.nn.Parameter) else v for k, v in kw.items()}
    try:
        loss = tbf.cross_entropy(**kw)
    except Exception as e:  # noqa: BLE001 (the checks' refusals are an outcome too)
        return type(e), str(e)
    z = kw["input"]
    grad = torch.autograd.grad(loss.sum(), z)[0] if z.requires_grad else None
    return loss.detach(), grad


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
@pytest.mark.parametrize("name, kw, common", list(_calls()), ids=[c[0] for c in _calls()])
def test_common_call_skips_only_checks_that_pass(name, kw, common, monkeypatch):
    args = {k: kw.get(k) for k in ("weight", "size_average", "reduce")}
    assert fp.cross_entropy_call_is_common(kw["input"], kw["target"], args["weight"], args["size_average"],
                                           args["reduce"], kw.get("reduction", "mean"),
                                           kw.get("label_smoothing", 0.0)) == common
    guarded = _outcome(kw)
    monkeypatch.setattr(fp, "cross_entropy_call_is_common", lambda *a: False)  # every call takes the checks
    checked = _outcome(kw)
    if common:
        assert isinstance(guarded[0], torch.Tensor), guarded
    for a, b in zip(guarded, checked):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), (name, guarded, checked)


# --- triplet_margin_loss's δ_p, δ_n in place -------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("swap", [False, True], ids=["no-swap", "swap"])
@pytest.mark.parametrize("need_p, need_n", [(True, True), (True, False), (False, True), (False, False)])
def test_triplet_pn_deltas_in_place_is_the_plain_formula(device, dtype, swap, need_p, need_n):
    gen = torch.Generator().manual_seed(4)
    dxp, dxn, dxs = (torch.randn(5, 6, generator=gen, dtype=torch.float64).to(device, dtype) for _ in range(3))
    dxs = dxs if swap else None
    plain = margin.triplet_pn_deltas(dxp, dxn, dxs, need_p, need_n)
    oracle = margin.triplet_pn_deltas(dxp.double(), dxn.double(), None if dxs is None else dxs.double(),
                                      need_p, need_n)
    copies = [None if t is None else t.clone() for t in (dxp, dxn, dxs)]
    fast = fp.triplet_pn_deltas_in_place(*copies, need_p, need_n)
    for f, pl, o, need in zip(fast, plain, oracle, (need_p, need_n)):
        if not need:
            assert f is None and pl is None
            continue
        _assert_close(f, pl, o, dtype)
        assert torch.equal(f, pl)  # the same ops in the same order: the same values in every dtype
        assert any(f.data_ptr() == c.data_ptr() for c in copies if c is not None)  # written in place


@pytest.mark.parametrize("swap", [False, True], ids=["no-swap", "swap"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["first-order", "create_graph"])
def test_triplet_backward_takes_the_in_place_form_only_without_a_graph(swap, create_graph, monkeypatch):
    took = []
    real_fast, real_plain = fp.triplet_pn_deltas_in_place, margin.triplet_pn_deltas
    monkeypatch.setattr(fp, "triplet_pn_deltas_in_place", lambda *a: took.append("fast") or real_fast(*a))
    monkeypatch.setattr(margin, "triplet_pn_deltas", lambda *a: took.append("plain") or real_plain(*a))
    gen = torch.Generator().manual_seed(5)
    a, p, n = (torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    loss = tbf.triplet_margin_loss(a, p, n, margin=2.0, swap=swap)
    grads = torch.autograd.grad(loss, (a, p, n), create_graph=create_graph)
    assert took == (["plain"] if create_graph else ["fast"])
    an, pn_, nn_ = (t.detach().clone().requires_grad_() for t in (a, p, n))
    native = torch.autograd.grad(F.triplet_margin_loss(an, pn_, nn_, margin=2.0, swap=swap), (an, pn_, nn_))
    for d, dn in zip(grads, native):
        torch.testing.assert_close(d.detach(), dn, rtol=1e-10, atol=1e-12)
