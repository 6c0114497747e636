"""δ losses beyond the common matrix (tests/cases/loss.py drives float64, gradcheck and low precision over
every option, autocast, per-example gradients under vmap, routing and the refusals): weights, legacy arguments,
broadcasting, edge values, bfloat16 inputs under autocast, twins, the registry, batched δ, Hessians."""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from cases.loss import (C, REDUCTIONS, cosine_args as _cosine_args, half_squared_error_native, hinge_args as _hinge_args,
                        kl_args as _kl_args, mlsm_args as _mlsm_args, pair as _pair, poisson_args as _poisson_args,
                        ranking_args as _ranking_args, signs as _signs, soft_margin_args as _soft_margin_args,
                        triplet_args as _triplet_args)
from util import LOW, assert_matches_native, gradchecks


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ours,native", [(tbf.mse_loss, F.mse_loss), (tbf.l1_loss, F.l1_loss),
                                         (tbf.huber_loss, F.huber_loss)])
def test_elementwise_weight(ours, native, reduction):
    x, y = _pair((4, 3))
    w = torch.rand(4, 3, requires_grad=True)
    assert_matches_native(ours, native, (x, y), {"weight": w, "reduction": reduction})


@pytest.mark.parametrize("size_average,reduce", [(True, None), (False, None), (None, False), (False, True)])
@pytest.mark.parametrize("ours,native", [(tbf.mse_loss, F.mse_loss), (tbf.l1_loss, F.l1_loss),
                                         (tbf.smooth_l1_loss, F.smooth_l1_loss)])
def test_elementwise_legacy_args(ours, native, size_average, reduce):
    with pytest.warns(UserWarning):  # torch's deprecation warning, raised by its own mapping
        assert_matches_native(ours, native, _pair((4, 3)), {"size_average": size_average, "reduce": reduce})


def test_elementwise_broadcasts_and_warns_like_torch():
    x, y = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    for ours, native in [(tbf.mse_loss, F.mse_loss), (tbf.l1_loss, F.l1_loss), (tbf.huber_loss, F.huber_loss)]:
        with pytest.warns(UserWarning, match="different to the input size"):
            assert_matches_native(ours, native, (x, y))


def test_mixed_dtypes_promote_like_torch():
    x, y = torch.randn(3, dtype=torch.bfloat16, requires_grad=True), torch.randn(3, requires_grad=True)
    for ours, native in [(tbf.mse_loss, F.mse_loss), (tbf.l1_loss, F.l1_loss)]:
        s, n = ours(x, y), native(x, y)
        assert s.dtype == n.dtype == torch.float32
        assert [g.dtype for g in torch.autograd.grad(s, [x, y])] == [torch.bfloat16, torch.float32]


def test_elementwise_noncontiguous_and_target_only_grad():
    x = torch.randn(3, 4, dtype=torch.float64).t()
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for ours, native in [(tbf.mse_loss, F.mse_loss), (tbf.smooth_l1_loss, F.smooth_l1_loss)]:
        assert_matches_native(ours, native, (x, y))


def test_half_squared_error_is_the_seeds_output_delta():
    h, y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True), torch.randn(6, 4, dtype=torch.float64)
    torchbp.nn.HalfSquaredError(reduction="sum")(h, y).backward()
    torch.testing.assert_close(h.grad, -(y - h.detach()), rtol=0, atol=0)  # δ = −(y − h)
    h.grad = None
    torchbp.nn.HalfSquaredError()(h, y).backward()  # default: mean over the batch
    torch.testing.assert_close(h.grad, -(y - h.detach()) / 6)


def test_bce_saturated_input_like_torch():
    """Logs clamped at −100 in the loss; ∂ℓ/∂h divides by max(h(1−h), 1e-12); ∂ℓ/∂y is ±inf at h ∈ {0, 1}."""
    h = torch.tensor([0.0, 1.0, 0.5, 1e-30, 1 - 1e-16], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.3], dtype=torch.float64)
    results = []
    for fn in (tbf.binary_cross_entropy, F.binary_cross_entropy):
        hh, yy = h.clone().requires_grad_(), y.clone().requires_grad_()
        loss = fn(hh, yy, reduction="none")
        results.append((loss, *torch.autograd.grad(loss.sum(), [hh, yy])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_bce_with_logits_extreme_logits():
    x = torch.tensor([-60.0, -25.0, 0.0, 25.0, 60.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    for pw in (None, torch.tensor([2.0], dtype=torch.float64)):
        assert_matches_native(tbf.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
                              (x, y), {"pos_weight": pw, "reduction": "none"})


@pytest.mark.parametrize("ours,native", [(tbf.cross_entropy, F.cross_entropy), (tbf.nll_loss, F.nll_loss)])
def test_class_losses_edge_cases(ours, native):
    z = torch.randn(4, C, dtype=torch.float64, requires_grad=True)
    all_ignored = torch.full((4,), -100)
    w0 = torch.rand(C, dtype=torch.float64)
    w0[0] = 0
    smooth = {"label_smoothing": 0.1} if ours is tbf.cross_entropy else {}
    for y, kw in ((all_ignored, {}), (all_ignored, {"weight": w0}), (all_ignored, smooth),
                  (torch.tensor([0, 0, -100, -100]), {"weight": w0})):  # Σ w = 0: "mean" is 0/0
        # the loss is nan, as torch's; the gradient is torch's too: 0 in every ignored row (a padding-only
        # batch must not put NaN into the weights), NaN in a kept row over a zero total weight
        l_ours, l_native = ours(z, y, **kw), native(z, y, **kw)
        assert torch.isnan(l_ours) and torch.isnan(l_native)
        g_ours, g_native = torch.autograd.grad(l_ours, z)[0], torch.autograd.grad(l_native, z)[0]
        assert torch.equal(g_ours.isnan(), g_native.isnan()) and torch.equal(g_ours.nan_to_num(), g_native.nan_to_num())
    assert_matches_native(ours, native, (z, all_ignored), {"reduction": "sum"})
    assert_matches_native(ours, native, (z, torch.tensor([0, 1, 2, 3], dtype=torch.uint8)))  # uint8 targets
    with pytest.warns(UserWarning):
        assert_matches_native(ours, native, (z, torch.tensor([0, 1, 2, 3])), {"size_average": False})
    z_nc = torch.randn(C, 4, dtype=torch.float64).t().requires_grad_()  # non-contiguous
    assert_matches_native(ours, native, (z_nc, torch.tensor([4, 1, 2, 3])))


def test_kl_div_zero_targets_gradcheck_low_precision_and_module():
    h, y = _kl_args((4, 6), False, zeros=True)
    l_ours, l_native = tbf.kl_div(h, y, reduction="sum"), F.kl_div(h, y, reduction="sum")
    assert torch.equal(l_ours, l_native)
    g_ours = torch.autograd.grad(l_ours, (h, y))
    g_native = torch.autograd.grad(l_native, (h, y))
    for a, b in zip(g_ours, g_native):
        assert torch.equal(a.isnan(), b.isnan()) and torch.allclose(a.nan_to_num(), b.nan_to_num())
    for log_target in (False, True):
        h, y = (t.detach().double().requires_grad_() for t in _kl_args((3, 4), log_target))
        gradchecks(tbf.kl_div, (h, y), {"reduction": "batchmean", "log_target": log_target})
    for dtype in LOW:
        assert_matches_native(tbf.kl_div, F.kl_div, _kl_args((8, 5), True), {"reduction": "batchmean",
                                                                           "log_target": True}, dtype=dtype)
    native = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is torchbp.nn.KLDivLoss
    args = _kl_args((4, 3), True)
    assert torch.equal(twin(*args), native(*args))
    with pytest.warns(UserWarning, match="batchmean"):
        tbf.kl_div(*args)  # "mean", torch's warning, pointing at this line
    with pytest.raises(ValueError, match="torchbp.functional.kl_div"):
        tbf.kl_div(*args, reduction="avg")


# --- autocast: every loss runs in float32, as native does ---------------------------------------------

AUTOCAST = [  # (ours, native, args builder, kwargs)
    (tbf.mse_loss, F.mse_loss, lambda: _pair((4, 3)), {}),
    (tbf.l1_loss, F.l1_loss, lambda: _pair((4, 3)), {}),
    (tbf.smooth_l1_loss, F.smooth_l1_loss, lambda: _pair((4, 3)), {}),
    (tbf.huber_loss, F.huber_loss, lambda: _pair((4, 3)), {}),
    (tbf.binary_cross_entropy, F.binary_cross_entropy, lambda: _pair((4, 3), lo=True), {}),
    (tbf.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
     lambda: (torch.randn(4, 3, requires_grad=True), torch.rand(4, 3)), {"pos_weight": torch.rand(3)}),
    (tbf.cross_entropy, F.cross_entropy, lambda: (torch.randn(4, C, requires_grad=True), torch.tensor([0, 1, 4, -100])),
     {"weight": torch.rand(C), "label_smoothing": 0.1}),
    (tbf.cross_entropy, F.cross_entropy, lambda: (torch.randn(4, C, requires_grad=True), torch.rand(4, C).softmax(1)), {}),
    (tbf.cross_entropy, F.cross_entropy, lambda: (torch.randn(4, C, requires_grad=True), torch.tensor([0, 1, 4, 2])), {}),
    (tbf.nll_loss, F.nll_loss, lambda: (torch.randn(4, C, requires_grad=True), torch.tensor([0, 1, 4, 2])), {}),
    (tbf.kl_div, F.kl_div, lambda: (torch.randn(4, C).log_softmax(1).requires_grad_(), torch.rand(4, C).softmax(1)),
     {"reduction": "batchmean"}),
    (tbf.soft_margin_loss, F.soft_margin_loss, lambda: (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3).sign()), {}),
    (tbf.margin_ranking_loss, F.margin_ranking_loss,
     lambda: (torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True), torch.randn(6).sign()), {"margin": 0.1}),
    (tbf.hinge_embedding_loss, F.hinge_embedding_loss, lambda: (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3).sign()), {}),
    (tbf.cosine_embedding_loss, F.cosine_embedding_loss,
     lambda: (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True), torch.tensor([1.0, -1, 1, -1])), {}),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda: (torch.randn(4, 3, requires_grad=True), torch.rand(4, 3) * 3),
     {"full": True}),
    (tbf.triplet_margin_loss, F.triplet_margin_loss,
     lambda: tuple(torch.randn(4, 6, requires_grad=True) for _ in range(3)), {"swap": True}),
]


@pytest.mark.parametrize("in_dtype", [torch.bfloat16])  # (float32 inputs: the matrix's AUTOCAST)
@pytest.mark.parametrize("ours,native,make,kw", AUTOCAST, ids=[f"{a[0].__name__}{i}" for i, a in enumerate(AUTOCAST)])
def test_cpu_autocast_bf16(ours, native, make, kw, in_dtype):
    args = make()
    leaves = [a.detach().to(in_dtype).requires_grad_(a.requires_grad) if a.is_floating_point() else a
              for a in args]
    s_args = [a.detach().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in leaves]
    n_args = [a.detach().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in leaves]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, n = ours(*s_args, **kw), native(*n_args, **kw)
    assert s.dtype == n.dtype == torch.float32
    torch.testing.assert_close(s, n, rtol=1e-5, atol=1e-6)
    req = [i for i, a in enumerate(leaves) if a.requires_grad]
    gs = torch.autograd.grad(s, [s_args[i] for i in req])
    gn = torch.autograd.grad(n, [n_args[i] for i in req])
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype == in_dtype
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_half_squared_error_autocast_runs_in_float32():
    """Under autocast the derivation's cost is computed in float32 inside its Function (no ToCopy node in the
    graph); δ_h and δ_y are the float32 formula cast to h's and y's dtypes."""
    h = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        J = tbf.half_squared_error(h, y)
    assert J.dtype == torch.float32
    assert [type(f).__name__ for f, _ in J.grad_fn.next_functions] == ["AccumulateGrad", "AccumulateGrad"]
    d = h.detach().float() - y.detach().float()
    torch.testing.assert_close(J.detach(), 0.5 * d.square().sum() / 4, rtol=1e-6, atol=0)
    J.backward()
    assert h.grad.dtype == y.grad.dtype == torch.bfloat16
    assert torch.equal(h.grad, (d / 4).bfloat16()) and torch.equal(y.grad, (-d / 4).bfloat16())


def test_half_squared_error_mixed_dtypes_promote_like_native():
    """bfloat16 h, float32 y (no autocast): computed in float32 as torch's own ops would, δ cast back."""
    h = torch.randn(5, 3, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(5, 3, requires_grad=True)
    J = tbf.half_squared_error(h, y)
    hn, yn = h.detach().requires_grad_(), y.detach().requires_grad_()
    Jn = 0.5 * ((yn - hn) ** 2).sum(-1).mean()
    assert J.dtype == Jn.dtype == torch.float32
    torch.testing.assert_close(J, Jn, rtol=1e-6, atol=0)
    g, gn = torch.autograd.grad(J, (h, y)), torch.autograd.grad(Jn, (hn, yn))
    assert [t.dtype for t in g] == [t.dtype for t in gn] == [torch.bfloat16, torch.float32]
    for a, b in zip(g, gn):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-6)


# --- twins, routing -------------------------------------------------------------------------------------

TWIN_CASES = [  # (native module, constructor kwargs, args builder)
    (torch.nn.MSELoss, {"reduction": "sum"}, lambda: _pair((4, 3))),
    (torch.nn.L1Loss, {}, lambda: _pair((4, 3))),
    (torch.nn.SmoothL1Loss, {"beta": 0.5}, lambda: _pair((4, 3))),
    (torch.nn.HuberLoss, {"delta": 0.5, "reduction": "none"}, lambda: _pair((4, 3))),
    (torch.nn.CrossEntropyLoss, {"weight": torch.rand(C), "ignore_index": 1, "label_smoothing": 0.1},
     lambda: (torch.randn(4, C, requires_grad=True), torch.tensor([0, 1, 4, 2]))),
    (torch.nn.NLLLoss, {"weight": torch.rand(C)},
     lambda: (torch.randn(4, C, requires_grad=True), torch.tensor([0, 1, 4, 2]))),
    (torch.nn.BCELoss, {"weight": torch.rand(3)}, lambda: _pair((4, 3), lo=True)),
    (torch.nn.BCEWithLogitsLoss, {"weight": torch.rand(3), "pos_weight": torch.rand(3)},
     lambda: (torch.randn(4, 3, requires_grad=True), torch.rand(4, 3))),
    (torch.nn.MSELoss, {"size_average": False}, lambda: _pair((4, 3))),
]


@pytest.mark.parametrize("native_cls,kw,make", TWIN_CASES, ids=[f"{c.__name__}{i}" for i, (c, _, _) in enumerate(TWIN_CASES)])
def test_twins(native_cls, kw, make):
    with pytest.warns(UserWarning) if "size_average" in kw else contextlib.nullcontext():
        native = native_cls(**kw).double()
    twin = torchbp.swap(copy.deepcopy(native))
    twin_cls = getattr(torchbp.nn, native_cls.__name__)
    assert type(twin) is twin_cls and isinstance(twin, native_cls)
    assert torchbp.registry.twin_for(native_cls) is twin_cls
    sd_n, sd_t = native.state_dict(), twin.state_dict()
    assert list(sd_n) == list(sd_t) and all(torch.equal(sd_n[k], sd_t[k]) for k in sd_n)
    if "size_average" not in kw:  # built directly: same buffers and state_dict as native
        assert list(twin_cls(**kw).state_dict()) == list(sd_n)
    assert_matches_native(twin, native, make())
    assert type(torchbp.unswap(twin)) is native_cls


def test_half_squared_error_module():
    m = torchbp.nn.HalfSquaredError()
    assert isinstance(m, torch.nn.modules.loss._Loss) and m.reduction == "mean"
    assert m.state_dict() == {} and "HalfSquaredError" in repr(m)
    h, y = _pair((4, 3))
    for r in REDUCTIONS:
        assert_matches_native(torchbp.nn.HalfSquaredError(r), lambda a, b, r=r: half_squared_error_native(a, b, r),
                              (h, y))


def test_registry_maps_each_native_loss_to_its_delta_function():
    """(Native's calls routed to them under manual_backward() are the matrix's ROUTE.)"""
    for native in (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.cross_entropy, F.nll_loss,
                   F.binary_cross_entropy, F.binary_cross_entropy_with_logits, F.soft_margin_loss,
                   F.multilabel_soft_margin_loss, F.margin_ranking_loss, F.hinge_embedding_loss,
                   F.cosine_embedding_loss, F.poisson_nll_loss, F.gaussian_nll_loss, F.triplet_margin_loss):
        assert torchbp.registry.function_for(native) is getattr(tbf, native.__name__)


# --- batched δ (autograd.grad(is_grads_batched=True): legacy vmap over backward) and torch.func ----------

BATCHED = [
    (lambda h, y: tbf.mse_loss(h, y, reduction="none"), lambda h, y: F.mse_loss(h, y, reduction="none")),
    (lambda h, y: tbf.l1_loss(h, y, reduction="none"), lambda h, y: F.l1_loss(h, y, reduction="none")),
    (lambda h, y: tbf.huber_loss(h, y, reduction="none"), lambda h, y: F.huber_loss(h, y, reduction="none")),
    (lambda h, y: tbf.half_squared_error(h, y, reduction="none"),
     lambda h, y: half_squared_error_native(h, y, reduction="none")),
    (lambda h, y: tbf.cross_entropy(h, y.argmax(1), reduction="none"),
     lambda h, y: F.cross_entropy(h, y.argmax(1), reduction="none")),
    (lambda h, y: tbf.cross_entropy(h, y.argmax(1), reduction="none", label_smoothing=0.1),
     lambda h, y: F.cross_entropy(h, y.argmax(1), reduction="none", label_smoothing=0.1)),
]


@pytest.mark.parametrize("i", range(len(BATCHED)))
def test_losses_with_batched_grads(i):
    _check_batched_grads(*BATCHED[i])


def _check_batched_grads(ours, native):
    # the δ arrives batched while the saved tensors are not: no in-place update of an unbatched temporary
    h, y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, 3, dtype=torch.float64)
    out = ours(h, y)
    G = torch.randn(5, *out.shape, dtype=torch.float64)
    (gs,) = torch.autograd.grad(out, h, G, is_grads_batched=True)
    (gn,) = torch.autograd.grad(native(h, y), h, G, is_grads_batched=True)
    torch.testing.assert_close(gs, gn, rtol=1e-10, atol=1e-12)
    js = torch.func.jacrev(lambda t: ours(t, y))(h.detach())
    jn = torch.func.jacrev(lambda t: native(t, y))(h.detach())
    torch.testing.assert_close(js, jn, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size_average,reduce", [(True, None), (False, None), (None, False)])
def test_margin_losses_legacy_args(size_average, reduce):
    kw = {"size_average": size_average, "reduce": reduce}
    cases = [(tbf.soft_margin_loss, F.soft_margin_loss, _soft_margin_args((4, 3))),
             (tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, _mlsm_args((4, 3))[:2]),
             (tbf.margin_ranking_loss, F.margin_ranking_loss, _ranking_args((5,), 0.0)),
             (tbf.hinge_embedding_loss, F.hinge_embedding_loss, _hinge_args((4, 3), 1.0)),
             (tbf.cosine_embedding_loss, F.cosine_embedding_loss, _cosine_args((6, 4))),
             (tbf.poisson_nll_loss, F.poisson_nll_loss, _poisson_args((4, 3), True)),
             (tbf.triplet_margin_loss, F.triplet_margin_loss, _triplet_args((4, 6)))]
    for ours, native, args in cases:
        with pytest.warns(UserWarning):  # torch's deprecation warning
            assert_matches_native(ours, native, args, kw)


def test_margin_losses_broadcast_like_torch():
    h, y = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    assert_matches_native(tbf.poisson_nll_loss, F.poisson_nll_loss, (h, y.detach().abs().requires_grad_()))
    assert_matches_native(tbf.margin_ranking_loss, F.margin_ranking_loss,
                          (h, torch.randn(1, 3, requires_grad=True), torch.randn(4, 1).sign().requires_grad_()))
    assert_matches_native(tbf.hinge_embedding_loss, F.hinge_embedding_loss, (h, _signs((3,))))
    assert_matches_native(tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, (h, torch.rand(3)))
    assert_matches_native(tbf.cosine_embedding_loss, F.cosine_embedding_loss,
                          (h, torch.randn(1, 3, requires_grad=True), _signs((4,))))
    assert_matches_native(tbf.triplet_margin_loss, F.triplet_margin_loss,
                          (h, torch.randn(1, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)))
    assert_matches_native(tbf.gaussian_nll_loss, F.gaussian_nll_loss,
                          (h, torch.randn(3, requires_grad=True), torch.rand(4, 1, requires_grad=True)))


def test_margin_losses_noncontiguous():
    x = torch.randn(3, 4, dtype=torch.float64).t().requires_grad_()
    y = torch.rand(3, 4, dtype=torch.float64).t()
    assert_matches_native(tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, (x, y))
    assert_matches_native(tbf.poisson_nll_loss, F.poisson_nll_loss, (x, y))
    assert_matches_native(tbf.cosine_embedding_loss, F.cosine_embedding_loss, (x, y, _signs((4,))))
    assert_matches_native(tbf.triplet_margin_loss, F.triplet_margin_loss, (x, y, y.flip(0)), {"swap": True})


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_composite_losses_autocast_run_in_float32(in_dtype):
    """torch's multilabel_soft_margin_loss and gaussian_nll_loss are Python composites of ops autocast
    leaves alone (bf16 in, bf16 out); ours run in float32 like every other loss: compared with native
    on float32 inputs."""
    cases = [(tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss,
              (torch.randn(4, 3), torch.rand(4, 3)), {"weight": torch.rand(3)}),
             (tbf.gaussian_nll_loss, F.gaussian_nll_loss, (torch.randn(4, 3), torch.randn(4, 3), torch.rand(4, 1)), {})]
    for ours, native, args, kw in cases:
        low = [a.to(in_dtype).requires_grad_() for a in args]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = ours(*low, **kw)
        assert s.dtype == torch.float32
        ref = [a.detach().float().requires_grad_() for a in low]
        n = native(*ref, **kw)
        torch.testing.assert_close(s, n, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(s, low), torch.autograd.grad(n, ref)):
            assert a.dtype == in_dtype
            torch.testing.assert_close(a, b.to(in_dtype), rtol=1e-2, atol=1e-3)


def test_poisson_full_nan_and_log_zero_like_torch():
    """full: ∂/∂y of the masked Stirling term is NaN at y ≤ 0 in torch (0·log y); log(0) where h + eps = 0."""
    cases = [(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5]), torch.tensor([0.0, -1.0, 0.5, 1.0, 3.0]),
              {"full": True}),
             (torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5]), torch.tensor([0.0, -1.0, 0.5, 1.0, 3.0]),
              {"full": True, "log_input": False}),
             (torch.tensor([0.0, -1e-9, 1.0]), torch.tensor([1.0, 1.0, 0.0]), {"log_input": False, "eps": 0.0})]
    for h, y, kw in cases:
        results = []
        for fn in (tbf.poisson_nll_loss, F.poisson_nll_loss):
            hh, yy = h.double().requires_grad_(), y.double().requires_grad_()
            loss = fn(hh, yy, reduction="none", **kw)
            results.append((loss, *torch.autograd.grad(loss.sum(), [hh, yy])))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0, equal_nan=True)


def test_soft_margin_target_not_differentiable_and_overflow():
    h, y = torch.randn(3, requires_grad=True), torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"soft_margin_loss: not differentiable with respect to target"):
        tbf.soft_margin_loss(h, y).backward()
    # e^{−yh} overflows: torch's loss is inf and its δ NaN (e^{−yh}/(1 + e^{−yh})); ours −y·σ(−yh) is finite
    h = torch.tensor([-800.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss = tbf.soft_margin_loss(h, torch.ones(2, dtype=torch.float64), reduction="sum")
    assert torch.equal(loss, F.soft_margin_loss(h, torch.ones(2, dtype=torch.float64), reduction="sum"))
    (g,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(g, -torch.sigmoid(-h.detach()))
    h = torch.randn(3, dtype=torch.bfloat16, requires_grad=True)  # torch computes in input's dtype
    assert tbf.soft_margin_loss(h, torch.ones(3)).dtype == F.soft_margin_loss(h, torch.ones(3)).dtype == torch.bfloat16


def test_gaussian_clamped_var_delta_like_torch():
    """torch clamps var under no_grad: autograd does not see the clamp, so a clamped var's δ is the
    formula at v = eps (not 0)."""
    h, y = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    v = torch.tensor([0.0, 1e-8, 1.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(tbf.gaussian_nll_loss(h, y, v, reduction="sum"), v)
    (gn,) = torch.autograd.grad(F.gaussian_nll_loss(h, y, v, reduction="sum"), v)
    torch.testing.assert_close(g, gn, rtol=1e-12, atol=0)
    assert g[0] == g[1] == 0.5 * (1 / 1e-6 - 1 / 1e-12)


MARGIN_TWINS = [  # (native module, constructor kwargs, args builder)
    (torch.nn.SoftMarginLoss, {"reduction": "sum"}, lambda: _soft_margin_args((4, 3))),
    (torch.nn.MultiLabelSoftMarginLoss, {"weight": torch.rand(3)}, lambda: _mlsm_args((4, 3))[:2]),
    (torch.nn.MarginRankingLoss, {"margin": 0.5}, lambda: _ranking_args((5,), 0.5)),
    (torch.nn.HingeEmbeddingLoss, {"margin": 0.5, "reduction": "none"}, lambda: _hinge_args((4, 3), 0.5)),
    (torch.nn.CosineEmbeddingLoss, {"margin": 0.2}, lambda: _cosine_args((6, 4))),
    (torch.nn.PoissonNLLLoss, {"log_input": False, "full": True}, lambda: _poisson_args((4, 3), False)),
    (torch.nn.GaussianNLLLoss, {"full": True, "eps": 1e-2},
     lambda: (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3), torch.rand(4, requires_grad=True))),
    (torch.nn.TripletMarginLoss, {"margin": 0.5, "p": 1.0, "swap": True}, lambda: _triplet_args((4, 6))),
]


@pytest.mark.parametrize("native_cls,kw,make", MARGIN_TWINS, ids=[c.__name__ for c, _, _ in MARGIN_TWINS])
def test_margin_twins(native_cls, kw, make):
    test_twins(native_cls, kw, make)


MARGIN_BATCHED = [  # (ours, native) on h, y of shape (4, 3)
    (lambda h, y: tbf.multilabel_soft_margin_loss(h, y.sigmoid(), reduction="none"),
     lambda h, y: F.multilabel_soft_margin_loss(h, y.sigmoid(), reduction="none")),
    (lambda h, y: tbf.soft_margin_loss(h, y.sign(), reduction="none"),
     lambda h, y: F.soft_margin_loss(h, y.sign(), reduction="none")),
    (lambda h, y: tbf.poisson_nll_loss(h, y.abs(), full=True, reduction="none"),
     lambda h, y: F.poisson_nll_loss(h, y.abs(), full=True, reduction="none")),
    (lambda h, y: tbf.gaussian_nll_loss(h, y, y.abs()[:, :1], reduction="none"),
     lambda h, y: F.gaussian_nll_loss(h, y, y.abs()[:, :1], reduction="none")),
    (lambda h, y: tbf.cosine_embedding_loss(h, y, y[:, 0].sign(), reduction="none"),
     lambda h, y: F.cosine_embedding_loss(h, y, y[:, 0].sign(), reduction="none")),
    (lambda h, y: tbf.triplet_margin_loss(h, y, y.flip(0), swap=True, reduction="none"),
     lambda h, y: F.triplet_margin_loss(h, y, y.flip(0), swap=True, reduction="none")),
]


@pytest.mark.parametrize("i", range(len(MARGIN_BATCHED)))
def test_margin_losses_with_batched_grads(i):
    _check_batched_grads(*MARGIN_BATCHED[i])


FUNC_CASES = [  # (ours, native) of (a, b, c), each (6, 5) in float64
    (lambda a, b, c: tbf.triplet_margin_loss(a, b, c, swap=True), lambda a, b, c: F.triplet_margin_loss(a, b, c, swap=True)),
    (lambda a, b, c: tbf.triplet_margin_loss(a, b, c, p=3.0), lambda a, b, c: F.triplet_margin_loss(a, b, c, p=3.0)),
    (lambda a, b, c: tbf.cosine_embedding_loss(a, b, c.sum(-1).sign(), margin=-0.5),
     lambda a, b, c: F.cosine_embedding_loss(a, b, c.sum(-1).sign(), margin=-0.5)),
    (lambda a, b, c: tbf.poisson_nll_loss(a, b.abs(), full=True), lambda a, b, c: F.poisson_nll_loss(a, b.abs(), full=True)),
    (lambda a, b, c: tbf.multilabel_soft_margin_loss(a, b.sigmoid(), c[0].abs()),
     lambda a, b, c: F.multilabel_soft_margin_loss(a, b.sigmoid(), c[0].abs())),
    (lambda a, b, c: tbf.margin_ranking_loss(a, b, c.sign()), lambda a, b, c: F.margin_ranking_loss(a, b, c.sign())),
    (lambda a, b, c: tbf.hinge_embedding_loss(a + b, c.sign()), lambda a, b, c: F.hinge_embedding_loss(a + b, c.sign())),
]


@pytest.mark.parametrize("i", range(len(FUNC_CASES)))
def test_margin_losses_torch_func(i):
    """Per-example gradients (vmap of grad) and Hessians (jacrev of jacrev: the δ differentiated)."""
    ours, native = FUNC_CASES[i]
    args = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    for fn in (lambda f: torch.func.vmap(torch.func.grad(f, argnums=(0, 1))),):
        for s, n in zip(fn(ours)(*args), fn(native)(*args)):
            torch.testing.assert_close(s, n, rtol=1e-10, atol=1e-12)
    for k in range(2):
        def at(f, t, k=k):
            return f(*[t if j == k else a for j, a in enumerate(args)])
        hs = torch.func.jacrev(torch.func.jacrev(lambda t: at(ours, t)))(args[k])
        hn = torch.func.jacrev(torch.func.jacrev(lambda t: at(native, t)))(args[k])
        torch.testing.assert_close(hs, hn, rtol=1e-10, atol=1e-12)
    v = torch.rand(5, dtype=torch.float64) + 0.1  # gaussian: var unbatched (torch's var < 0 check syncs)
    gs = torch.func.vmap(torch.func.grad(lambda a, b: tbf.gaussian_nll_loss(a, b, v), argnums=(0, 1)))(*args[:2])
    gn = torch.func.vmap(torch.func.grad(lambda a, b: F.gaussian_nll_loss(a, b, v), argnums=(0, 1)))(*args[:2])
    for s, n in zip(gs, gn):
        torch.testing.assert_close(s, n, rtol=1e-10, atol=1e-12)


def test_cross_entropy_empty_batch_like_native():
    z = torch.randn(0, 5, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for reduction in REDUCTIONS:
        ours, native = tbf.cross_entropy(z, y, reduction=reduction), F.cross_entropy(z, y, reduction=reduction)
        assert torch.equal(ours.isnan(), native.isnan()) and ours.shape == native.shape
        (g,) = torch.autograd.grad(ours.sum(), z)
        assert g.shape == (0, 5)


def test_cross_entropy_compiles_in_one_graph():
    """torch.compile traces cross_entropy's forward and backward without a graph break (the CPU fast path's
    look at the target count is skipped while tracing), and its gradient is native's."""
    dynamo = pytest.importorskip("torch._dynamo")
    z = torch.randn(6, C, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])

    def cost(z):
        return tbf.cross_entropy(z, y)

    dynamo.reset()
    assert dynamo.explain(cost)(z).graph_break_count == 0
    (g,) = torch.autograd.grad(torch.compile(cost, backend="aot_eager")(z), z)
    (gn,) = torch.autograd.grad(F.cross_entropy(z, y), z)
    torch.testing.assert_close(g, gn, rtol=1e-12, atol=0)
