"""torchbp.functional's losses: elementwise, the derivation's ½‖y − h‖², binary and class cross-entropy, KL,
margin / embedding / likelihood losses. Builders of their inputs are shared with tests/test_loss.py."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, ROUTE, SWEEP, VMAP, Bad, Case, kw_id, shape_id

REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(5,), (4, 3), (2, 3, 4)]
C = 5  # classes
CLASS_SHAPES = [((C,), ()), ((6, C), (6,)), ((2, C, 3, 4), (2, 3, 4))]  # (input, class-index target)
CPU = ("cpu",)


def half_squared_error_native(h, y, reduction="mean"):
    """The derivation's cost in plain autograd: ½‖y − h‖² per example (dim 0; 1-D = one example)."""
    per = 0.5 * ((y - h) ** 2).sum(tuple(range(1, h.dim()))) if h.dim() >= 2 else 0.5 * ((y - h) ** 2).sum()
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


def pair(shape, lo=None):
    """input, target with some exact ties (kinks of l1 / smooth_l1 / huber) and some |d| beyond 1."""
    if lo is not None:  # probabilities, for binary_cross_entropy
        return (torch.rand(shape) * 0.8 + 0.1).requires_grad_(), torch.rand(shape).requires_grad_()
    x, y = torch.randn(shape) * 2, torch.randn(shape)
    y.view(-1)[:1] = x.view(-1)[:1]
    return x.requires_grad_(), y.requires_grad_()


def indices(tshape, ignore_index=-100):
    y = torch.randint(0, C, tshape)
    if y.dim():
        y.view(-1)[:2] = ignore_index  # some ignored targets
    return y


def kl_args(shape, log_target, zeros=False):
    h = torch.randn(shape).log_softmax(-1).requires_grad_()
    y = torch.rand(shape).softmax(-1)
    if zeros:
        y.view(-1)[::3] = 0  # log 0: ℓ = 0 there and ∂ℓ/∂y is NaN, as native's xlogy
    return h, (y.log() if log_target else y).requires_grad_()


def signs(shape, values=(1.0, -1.0)):
    v = torch.tensor(values, dtype=torch.float64)
    return v[torch.randint(0, len(values), shape)]


def soft_margin_args(shape):
    return torch.randn(shape).requires_grad_(), signs(shape)


def mlsm_args(shape, weight=None):
    y = torch.randint(0, 2, shape).double()
    y.view(-1)[:2] = torch.tensor([0.25, 0.75])[: y.numel()]  # soft labels too: torch differentiates y
    w = None if weight is None else (torch.rand(weight) + 0.5).requires_grad_()
    return (torch.randn(shape) * 3).requires_grad_(), y.requires_grad_(), w


def ranking_args(shape, margin):
    x1, x2, y = torch.randn(shape), torch.randn(shape), signs(shape)
    x2.view(-1)[0], y.view(-1)[0] = 0.25, 1.0
    x1.view(-1)[0] = 0.25 + margin  # u = −y(x1 − x2) + margin = 0 exactly: the kink (dyadic values)
    return x1.requires_grad_(), x2.requires_grad_(), y.requires_grad_()


def hinge_args(shape, margin):
    h, y = torch.randn(shape) * 2, signs(shape, (1.0, -1.0, 0.0))  # y = 0: torch adds both terms
    h.view(-1)[0], y.view(-1)[0] = margin, -1.0  # margin − h = 0: the kink
    return h.requires_grad_(), y


def cosine_args(shape):
    x1, x2 = torch.randn(shape), torch.randn(shape)
    y = signs(shape[:-1], (1.0, -1.0, 0.0)) if len(shape) > 1 else torch.tensor(-1.0)
    if len(shape) > 1:  # an orthogonal pair with y = −1: c = 0 = margin, the kink
        x1[0], x2[0], y[0] = 0.0, 0.0, -1.0
        x1[0, 0], x2[0, 1] = 1.5, -2.0
    return x1.requires_grad_(), x2.requires_grad_(), y


def poisson_args(shape, log_input):
    h = torch.randn(shape) if log_input else torch.rand(shape) * 3 + 0.05
    y = torch.rand(shape) * 4 + 0.1
    y.view(-1)[:3] = torch.tensor([1.0, 0.5, 2.0])[: y.numel()]  # y = 1: the edge of Stirling's mask
    return h.requires_grad_(), y.requires_grad_()


def triplet_args(shape):
    a, p, n = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    if len(shape) > 1:
        p[0] = a[0]  # d(a, n) = d(p, n) exactly: swap's tie
    return a.requires_grad_(), p.requires_grad_(), n.requires_grad_()


def away(t, kink, gap=0.1):
    """t moved at least `gap` away from `kink`, where finite differences break."""
    d = t - kink
    return kink + d.sign() * (d.abs() + gap)


def _name(ours, kw):
    return ours.__name__ + (f"[{kw_id(kw)}]" if kw else "")


CASES = []


ONE_EXAMPLE = {"cross_entropy", "nll_loss", "triplet_margin_loss", "cosine_embedding_loss",  # 1-D: one example
               "multilabel_soft_margin_loss"}


_ROUTED = set()


def _per_example(ours, args, kwargs):
    """The float64 inputs' extra checks, with fewer inputs than FLOAT64 takes (the matrix's time): VMAP on the
    reduction="none" inputs, every argument with the batch dim mapped over it; ROUTE on the first "mean" input
    of each option set."""
    kw = kwargs() if callable(kwargs) else dict(kwargs or {})
    r = kw.get("reduction", "mean")
    if r == "mean":  # routing: once per option set (the first shape), not per shape
        key = (ours.__name__, tuple(sorted((k, tuple(v.shape) if isinstance(v, torch.Tensor) else v)
                                           for k, v in kw.items())))
        first = key not in _ROUTED
        _ROUTED.add(key)
        return {"checks": (FLOAT64, ROUTE) if first else (FLOAT64,)}
    if r != "none":
        return {"checks": (FLOAT64,)}
    a, name = args(), ours.__name__
    skip = "one example: no batch dim to map" if a[0].dim() == 0 or (a[0].dim() == 1 and name in ONE_EXAMPLE) \
        else "a keyword (weight) has the batch dim: the matrix maps arguments only" \
        if any(isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == a[0].shape[0] for t in kw.values()) \
        else "native checks var's values in Python, which vmap refuses (both sides)" \
        if name == "gaussian_nll_loss" and isinstance(a[2], torch.Tensor) else None
    if skip:
        return {"checks": (FLOAT64, VMAP), "skip": {VMAP: skip}}
    if name in ("cross_entropy", "nll_loss") and a[0].dim() >= 3:  # (N, C, d1, ...): per position of d_last
        return {"checks": (FLOAT64, VMAP), "vmap_dims": tuple(t.dim() - 1 for t in a)}
    n = a[0].shape[0]
    return {"checks": (FLOAT64, VMAP), "vmap_dims": tuple(
        0 if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else None for t in a)}


def add(id, ours, native, args, kwargs=None, check=FLOAT64, **options):
    extra = _per_example(ours, args, kwargs) if check == FLOAT64 else {"checks": SWEEP[check]}
    CASES.append(Case(f"loss.{id}", ours, native, args, {} if kwargs is None else kwargs, **extra, **options))


# --- elementwise ----------------------------------------------------------------------------------------
ELEMENTWISE = [  # (ours, native, kwargs)
    (tbf.mse_loss, F.mse_loss, {}),
    (tbf.l1_loss, F.l1_loss, {}),
    (tbf.smooth_l1_loss, F.smooth_l1_loss, {}),
    (tbf.smooth_l1_loss, F.smooth_l1_loss, {"beta": 0.5}),
    (tbf.smooth_l1_loss, F.smooth_l1_loss, {"beta": 0.0}),
    (tbf.huber_loss, F.huber_loss, {}),
    (tbf.huber_loss, F.huber_loss, {"delta": 0.3}),
]


def elementwise_gradcheck_args():
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    y = x + (torch.rand(3, 4, dtype=torch.float64) + 0.05) * torch.randn(3, 4, dtype=torch.float64).sign()
    y = y + 0.1 * (y - x).sign()  # |h − y| away from 0 and from β / δ where finite differences break
    return x.requires_grad_(), y.requires_grad_()


for ours, native, kw in ELEMENTWISE:
    for shape in SHAPES:
        for r in REDUCTIONS:
            add(f"{_name(ours, kw)}-{shape_id(shape)}-{r}", ours, native, lambda shape=shape: pair(shape),
                dict(kw, reduction=r))
    add(_name(ours, kw), ours, native, elementwise_gradcheck_args, kw, GRADCHECK)
    add(_name(ours, kw) + "-16x33", ours, native, lambda: pair((16, 33)), kw, LOW)

# --- the derivation's cost: ½‖y − h‖² ---------------------------------------------------------------------
for r in REDUCTIONS:
    for shape in [(), (5,), (4, 3), (2, 3, 4)]:
        add(f"half_squared_error-{shape_id(shape)}-{r}", tbf.half_squared_error, half_squared_error_native,
            lambda shape=shape: (torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)),
            {"reduction": r})
    add(f"half_squared_error-3x2x2-{r}", tbf.half_squared_error, half_squared_error_native,
        lambda: (torch.randn(3, 2, 2, requires_grad=True), torch.randn(3, 2, 2, requires_grad=True)),
        {"reduction": r}, GRADCHECK)
add("half_squared_error-16x33", tbf.half_squared_error, half_squared_error_native, lambda: pair((16, 33)),
    check=LOW, devices=CPU)

# --- binary cross-entropy ---------------------------------------------------------------------------------
bce, bcel = (tbf.binary_cross_entropy, F.binary_cross_entropy), (tbf.binary_cross_entropy_with_logits,
                                                                  F.binary_cross_entropy_with_logits)
for shape in [(4, 3), (2, 4, 3)]:
    for r in REDUCTIONS:
        for weight in [None, (3,), (4, 1), (4, 3)]:
            add(f"binary_cross_entropy-{shape_id(shape)}-w{weight and shape_id(weight)}-{r}", *bce,
                lambda shape=shape: pair(shape, lo=True),
                lambda weight=weight, r=r: {"weight": None if weight is None else torch.rand(weight) + 0.5,
                                            "reduction": r})
        for weight, pos_weight in [(None, None), ((3,), None), (None, (3,)), ((4, 1), (3,)), (None, (4, 1)),
                                   ((4, 3), (1, 3))]:
            add(f"binary_cross_entropy_with_logits-{shape_id(shape)}-w{weight and shape_id(weight)}"
                f"-pw{pos_weight and shape_id(pos_weight)}-{r}", *bcel,
                lambda shape=shape: ((torch.randn(shape) * 4).requires_grad_(), torch.rand(shape).requires_grad_()),
                lambda weight=weight, pos_weight=pos_weight, r=r: {
                    "reduction": r, "weight": None if weight is None else torch.rand(weight) + 0.5,
                    "pos_weight": None if pos_weight is None else torch.rand(pos_weight) * 3})
add("binary_cross_entropy-3x4-weight", *bce, lambda: pair((3, 4), lo=True), lambda: {"weight": torch.rand(4) + 0.5},
    GRADCHECK)
add("binary_cross_entropy_with_logits-3x4-weight-pos_weight", *bcel,
    lambda: (torch.randn(3, 4, requires_grad=True), torch.rand(3, 4).requires_grad_()),
    lambda: {"weight": torch.rand(3, 1) + 0.5, "pos_weight": torch.rand(4) * 3}, GRADCHECK)
add("binary_cross_entropy_with_logits-3x4-none", *bcel,
    lambda: (torch.randn(3, 4, requires_grad=True), torch.rand(3, 4).requires_grad_()), {"reduction": "none"},
    GRADCHECK)
add("binary_cross_entropy-16x33-weight", *bce, lambda: pair((16, 33), lo=True),
    lambda: {"weight": torch.rand(33) + 0.5}, LOW, devices=CPU)
add("binary_cross_entropy_with_logits-16x33-pos_weight", *bcel,
    lambda: ((torch.randn(16, 33) * 3).requires_grad_(), torch.rand(16, 33)),
    lambda: {"pos_weight": torch.rand(33) * 3}, LOW, devices=CPU)

# --- NLL and cross-entropy --------------------------------------------------------------------------------
for (xshape, tshape) in CLASS_SHAPES:
    cd = 0 if len(xshape) == 1 else 1
    for ii in (-100, 2):
        for weighted in (False, True):
            for r in REDUCTIONS:
                tag = f"{len(xshape)}d-ignore{ii}-{'w' if weighted else 'now'}-{r}"
                add(f"nll_loss-{tag}", tbf.nll_loss, F.nll_loss,
                    lambda xshape=xshape, tshape=tshape, ii=ii, cd=cd: (
                        torch.randn(xshape).log_softmax(cd).requires_grad_(), indices(tshape, ii)),
                    lambda weighted=weighted, ii=ii, r=r: {"weight": torch.rand(C) + 0.2 if weighted else None,
                                                           "ignore_index": ii, "reduction": r})
                for ls in (0.0, 0.25):
                    add(f"cross_entropy-indices-{tag}-ls{ls}", tbf.cross_entropy, F.cross_entropy,
                        lambda xshape=xshape, tshape=tshape, ii=ii: ((torch.randn(xshape) * 2).requires_grad_(),
                                                                     indices(tshape, ii)),
                        lambda weighted=weighted, ii=ii, r=r, ls=ls: {
                            "weight": torch.rand(C) + 0.2 if weighted else None, "ignore_index": ii,
                            "reduction": r, "label_smoothing": ls})
    for weighted in (False, True):
        for r in REDUCTIONS:
            for ls in (0.0, 0.25):  # target and weight both get gradients, as in torch
                add(f"cross_entropy-probs-{len(xshape)}d-{'w' if weighted else 'now'}-{r}-ls{ls}", tbf.cross_entropy,
                    F.cross_entropy,
                    lambda xshape=xshape, cd=cd: ((torch.randn(xshape) * 2).requires_grad_(),
                                                  torch.randn(xshape).softmax(cd).requires_grad_()),
                    lambda weighted=weighted, r=r, ls=ls: {
                        "weight": (torch.rand(C) + 0.2).requires_grad_() if weighted else None,
                        "reduction": r, "label_smoothing": ls})


def _class_gradcheck_inputs():  # small: gradgradcheck is O(n²)
    return torch.randn(2, 3, 2, requires_grad=True), torch.tensor([[0, 2], [-100, 1]]), torch.rand(3) + 0.2


for r in REDUCTIONS:
    for tag, ours, make, kw in [
        ("nll_loss-2x3x2-w", tbf.nll_loss, lambda: _class_gradcheck_inputs()[:2],
         lambda: {"weight": _class_gradcheck_inputs()[2]}),
        ("cross_entropy-2x3x2-w-ls0.2", tbf.cross_entropy, lambda: _class_gradcheck_inputs()[:2],
         lambda: {"weight": _class_gradcheck_inputs()[2], "label_smoothing": 0.2}),
        ("cross_entropy-2d-none-ignored", tbf.cross_entropy,  # 2-D, no target ignored
         lambda: (lambda z, y, w: (z[:, :, 0], y[:, 1]))(*_class_gradcheck_inputs()), dict),
        ("cross_entropy-2d-one-ignored", tbf.cross_entropy,
         lambda: (lambda z, y, w: (z[:, :, 1], y[:, 0]))(*_class_gradcheck_inputs()), dict),
        ("cross_entropy-2d-one-ignored-w-ls0.3", tbf.cross_entropy,
         lambda: (lambda z, y, w: (z[:, :, 1], y[:, 0]))(*_class_gradcheck_inputs()),
         lambda: {"weight": torch.rand(3) + 0.2, "label_smoothing": 0.3}),
        ("cross_entropy-1d-0d-target", tbf.cross_entropy,
         lambda: (lambda z, y, w: (z[0, :, 0], y[0, 1]))(*_class_gradcheck_inputs()), dict),
        ("cross_entropy-probs-2x3x2-w-ls0.1", tbf.cross_entropy,
         lambda: (torch.randn(2, 3, 2, requires_grad=True), torch.randn(2, 3, 2).softmax(1).requires_grad_(),
                  (torch.rand(3) + 0.2).requires_grad_()), lambda: {"label_smoothing": 0.1}),
    ]:
        add(f"{tag}-{r}", ours, None, make, lambda kw=kw, r=r: dict(kw(), reduction=r), GRADCHECK)


def _class_low():
    return (torch.randn(32, 10) * 3).requires_grad_(), torch.randint(0, 10, (32,))


add("cross_entropy-32x10-w-ls0.1", tbf.cross_entropy, F.cross_entropy, _class_low,
    lambda: {"weight": torch.rand(10) + 0.2, "label_smoothing": 0.1}, LOW, devices=CPU)
add("nll_loss-32x10", tbf.nll_loss, F.nll_loss,
    lambda: (lambda z, y: (z.detach().log_softmax(1).requires_grad_(), y))(*_class_low()), check=LOW, devices=CPU)
add("cross_entropy-probs-32x10", tbf.cross_entropy, F.cross_entropy,
    lambda: (_class_low()[0], torch.rand(32, 10).softmax(1)), check=LOW, devices=CPU)

# --- KL divergence ----------------------------------------------------------------------------------------
for shape in SHAPES:
    for r in REDUCTIONS + ["batchmean"]:
        for lt in (False, True):
            add(f"kl_div-{shape_id(shape)}-{r}-log_target{lt}", tbf.kl_div, F.kl_div,
                lambda shape=shape, lt=lt: kl_args(shape, lt), {"reduction": r, "log_target": lt},
                quiet=True)  # reduction="mean" warns, as torch does
add("kl_div-16x33-batchmean", tbf.kl_div, F.kl_div, lambda: kl_args((16, 33), False), {"reduction": "batchmean"}, LOW,
    devices=CPU)

# --- margin, embedding and likelihood losses ----------------------------------------------------------------
MARGIN = [  # (ours, native, args builder(shape), kwargs, shapes)
    (tbf.soft_margin_loss, F.soft_margin_loss, soft_margin_args, {}, SHAPES),
    (tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, mlsm_args, {}, SHAPES),
    (tbf.margin_ranking_loss, F.margin_ranking_loss, lambda s: ranking_args(s, 0.0), {}, SHAPES),
    (tbf.margin_ranking_loss, F.margin_ranking_loss, lambda s: ranking_args(s, 0.5), {"margin": 0.5}, SHAPES),
    (tbf.hinge_embedding_loss, F.hinge_embedding_loss, lambda s: hinge_args(s, 1.0), {}, SHAPES),
    (tbf.hinge_embedding_loss, F.hinge_embedding_loss, lambda s: hinge_args(s, 0.25), {"margin": 0.25}, SHAPES),
    (tbf.cosine_embedding_loss, F.cosine_embedding_loss, cosine_args, {}, [(5,), (6, 4)]),
    (tbf.cosine_embedding_loss, F.cosine_embedding_loss, cosine_args, {"margin": -0.3}, [(5,), (6, 4)]),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda s: poisson_args(s, True), {}, SHAPES),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda s: poisson_args(s, True), {"full": True}, SHAPES),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda s: poisson_args(s, False), {"log_input": False}, SHAPES),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda s: poisson_args(s, False),
     {"log_input": False, "full": True, "eps": 0.1}, SHAPES),
] + [
    (tbf.triplet_margin_loss, F.triplet_margin_loss, triplet_args, {"p": p, "swap": swap, **kw},
     [(5,), (4, 6), (2, 3, 4)])
    for p in (2.0, 1.0, 3.0, 1.5, 0.5, float("inf")) for swap in (False, True)
    for kw in ([{}, {"margin": 0.3, "eps": 1e-3}] if p == 2.0 else [{}])
]
for ours, native, make, kw, shapes in MARGIN:
    for shape in shapes:
        for r in REDUCTIONS:
            add(f"{_name(ours, kw)}-{shape_id(shape)}-{r}", ours, native,
                lambda make=make, shape=shape: make(shape), dict(kw, reduction=r))
for weight in [None, (3,), (4, 1), (4, 3)]:
    for r in REDUCTIONS:
        add(f"multilabel_soft_margin_loss-4x3-w{weight and shape_id(weight)}-{r}", tbf.multilabel_soft_margin_loss,
            F.multilabel_soft_margin_loss, lambda weight=weight: mlsm_args((4, 3), weight)[:2],
            lambda weight=weight, r=r: {"weight": mlsm_args((4, 3), weight)[2], "reduction": r})
for var in [(2, 3, 4), (2, 3), (2, 3, 1), (2, 1, 4), (1, 3, 4), 0.7]:
    def gaussian_args(var=var):
        h, y = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4, requires_grad=True)
        if not isinstance(var, float):
            var = torch.rand(var) + 0.1
            var.view(-1)[:2] = torch.tensor([0.0, 1e-8])[: var.numel()]  # clamped to eps: still a δ, as torch
            var.requires_grad_()
        return h, y, var
    for full in (False, True):
        for r in REDUCTIONS:
            add(f"gaussian_nll_loss-var{var if isinstance(var, float) else shape_id(var)}-full{full}-{r}",
                tbf.gaussian_nll_loss, F.gaussian_nll_loss, gaussian_args, {"full": full, "eps": 1e-3, "reduction": r})


def _ranking_gradcheck_args():
    x1, x2, t = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), signs((5,))
    x1 = x2 + away(t * (x1 - x2), 0.3) * t  # u = 0.3 − t(x1 − x2) away from 0
    return x1.requires_grad_(), x2.requires_grad_(), t.requires_grad_()


def _cosine_gradcheck_args():
    x1, x2, t = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([1.0, -1.0, -1.0, 0.0])
    ok = (F.cosine_similarity(x1, x2, eps=0) - 0.1).abs() > 0.05  # rows near the margin would straddle the kink
    return x1[ok].requires_grad_(), x2[ok].requires_grad_(), t[ok]


def _poisson_gradcheck_args(log_input):
    h, y = poisson_args((3, 4), log_input)
    y = y.detach()
    return h, torch.where((y - 1).abs() < 0.1, y + 0.25, y).requires_grad_()  # off Stirling's mask edge y = 1


add("soft_margin_loss-3x4", tbf.soft_margin_loss, None,
    lambda: (torch.randn(3, 4, dtype=torch.float64, requires_grad=True), signs((3, 4))), check=GRADCHECK)
add("multilabel_soft_margin_loss-3x4-w", tbf.multilabel_soft_margin_loss, None, lambda: mlsm_args((3, 4))[:2],
    lambda: {"weight": (torch.rand(4) + 0.5).requires_grad_()}, GRADCHECK)
add("margin_ranking_loss-5-margin0.3", tbf.margin_ranking_loss, None, _ranking_gradcheck_args, {"margin": 0.3},
    GRADCHECK)
add("hinge_embedding_loss-3x4", tbf.hinge_embedding_loss, None,
    lambda: (away(torch.randn(3, 4, dtype=torch.float64), 1.0).requires_grad_(), signs((3, 4), (1.0, -1.0, 0.0))),
    check=GRADCHECK)
add("cosine_embedding_loss-4x5-margin0.1", tbf.cosine_embedding_loss, None, _cosine_gradcheck_args, {"margin": 0.1},
    GRADCHECK)
add("cosine_embedding_loss-5", tbf.cosine_embedding_loss, None,
    lambda: (torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True), torch.tensor(1.0)),
    check=GRADCHECK)
for log_input in (True, False):
    add(f"poisson_nll_loss-3x4-log_input{log_input}-full", tbf.poisson_nll_loss, None,
        lambda log_input=log_input: _poisson_gradcheck_args(log_input), {"log_input": log_input, "full": True},
        GRADCHECK)
add("gaussian_nll_loss-3x4-var3x1-full", tbf.gaussian_nll_loss, None,
    lambda: (torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True),
             (torch.rand(3, 1) + 0.5).requires_grad_()), {"full": True}, GRADCHECK)
for p in (2.0, 1.0, 3.0, 1.5, float("inf")):
    for swap in (False, True):
        add(f"triplet_margin_loss-4x5-p{p}-swap{swap}", tbf.triplet_margin_loss, None,
            lambda: tuple(torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)),
            {"p": p, "swap": swap, "margin": 5.0}, GRADCHECK)  # margin large: every example active

for i, (ours, native, make, kw) in enumerate([
    (tbf.soft_margin_loss, F.soft_margin_loss, lambda: soft_margin_args((16, 33)), {}),
    (tbf.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, lambda: mlsm_args((16, 33), (33,))[:2], {}),
    (tbf.margin_ranking_loss, F.margin_ranking_loss, lambda: ranking_args((16, 33), 0.5), {"margin": 0.5}),
    (tbf.hinge_embedding_loss, F.hinge_embedding_loss, lambda: hinge_args((16, 33), 1.0), {}),
    (tbf.cosine_embedding_loss, F.cosine_embedding_loss, lambda: cosine_args((16, 33)), {"margin": 0.1}),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda: poisson_args((16, 33), True), {"full": True}),
    (tbf.poisson_nll_loss, F.poisson_nll_loss, lambda: poisson_args((16, 33), False), {"log_input": False}),
    (tbf.gaussian_nll_loss, F.gaussian_nll_loss,
     lambda: (torch.randn(16, 33, requires_grad=True), torch.randn(16, 33), torch.rand(16, 1, requires_grad=True)), {}),
    (tbf.triplet_margin_loss, F.triplet_margin_loss, lambda: triplet_args((16, 33)), {}),
    (tbf.triplet_margin_loss, F.triplet_margin_loss, lambda: triplet_args((16, 33)), {"p": 1.0, "swap": True}),
]):
    add(f"{_name(ours, kw)}-16x33", ours, native, make, kw, LOW)


# --- CTC: padded and concatenated targets, repeated labels, an empty target, every reduction (the twin module) -----
class CTC:
    """nn.CTCLoss(reduction) called on (log_probs, targets, input_lengths, target_lengths), swapped to its twin
    when ``twin``."""

    def __init__(self, twin):
        self.twin, self.__name__ = twin, "ctc_loss" if twin else "CTCLoss"

    def __call__(self, *args, reduction="mean"):
        import torchbp
        m = torch.nn.CTCLoss(reduction=reduction)
        if self.twin:
            m = torchbp.swap(m)
            assert type(m) is not torch.nn.CTCLoss
        return m(*args)


CTC_TARGETS = torch.tensor([[1, 2, 2, 3], [3, 1, 0, 0], [4, 4, 4, 0], [2, 0, 0, 0]])  # repeats, one empty below


def ctc_args(lengths, concatenated):
    il, tl = lengths
    x = torch.randn(8, 4, 5, dtype=torch.float64).log_softmax(-1).requires_grad_()
    tg = torch.cat([CTC_TARGETS[n, :L] for n, L in enumerate(tl)]) if concatenated else CTC_TARGETS
    return x, tg, torch.tensor(il), torch.tensor(tl)


for i, lengths in enumerate([([8, 7, 8, 5], [4, 2, 3, 1]), ([8, 8, 6, 3], [4, 2, 3, 0])]):
    for concatenated in (False, True):
        for r in REDUCTIONS:
            make = (lambda lengths=lengths, concatenated=concatenated: ctc_args(lengths, concatenated))
            tag = f"ctc_loss-lengths{i}-{'concatenated' if concatenated else 'padded'}-{r}"
            CASES.append(Case(f"loss.{tag}", CTC(True), CTC(False), make, {"reduction": r},
                              checks=(FLOAT64, ROUTE) if r == "mean" else (FLOAT64,), devices=CPU))
            # (no VMAP: native's ctc_loss under vmap checks its targets against the unmapped batch and refuses)
            CASES.append(Case(f"loss.{tag}", CTC(True), CTC(False), make, {"reduction": r}, checks=(LOW,),
                              low_dtypes=(torch.float32,), devices=CPU))  # (native's CPU kernel: no half types)


# --- bad inputs: refused by native too (unless said), and torchbp's error names the op ------------------------
def _x():
    return torch.randn(2, 3)


def _bad(id, ours, args, match, kwargs=None, native="same", why=""):
    native = getattr(F, ours.__name__) if native == "same" else native
    return Bad(f"loss.{id}", ours, native, args, match, {} if kwargs is None else kwargs, why)


BAD = [
    _bad("mse_loss-broadcast", tbf.mse_loss, lambda: (torch.randn(2, 3), torch.randn(4, 3)),
         r"functional\.mse_loss: target of shape \[4, 3\] does not broadcast"),
    _bad("mse_loss-reduction", tbf.mse_loss, lambda: (torch.randn(2), torch.randn(2)),
         "mse_loss: 'bad' is not a valid value for reduction", {"reduction": "bad"}),
    _bad("mse_loss-weight", tbf.mse_loss, lambda: (_x(), _x()), "mse_loss: weight and input must have the same size",
         lambda: {"weight": torch.rand(3)}),
    _bad("smooth_l1_loss-beta", tbf.smooth_l1_loss, lambda: (torch.randn(2), torch.randn(2)),
         "smooth_l1_loss: beta must be >= 0", {"beta": -1.0}),
    _bad("huber_loss-delta", tbf.huber_loss, lambda: (torch.randn(2), torch.randn(2)), "huber_loss: delta must be > 0",
         {"delta": 0.0}),
    _bad("half_squared_error-shape", tbf.half_squared_error, lambda: (_x(), torch.randn(3)),
         r"half_squared_error: input of shape \[2, 3\] and target of shape \[3\]", native=None,
         why="no torch counterpart: the derivation's cost asks for one target per output"),
    _bad("binary_cross_entropy-shape", tbf.binary_cross_entropy, lambda: (torch.rand(2, 3), torch.rand(3)),
         r"binary_cross_entropy: target of shape \[3\] must have input's shape"),
    _bad("binary_cross_entropy-range", tbf.binary_cross_entropy, lambda: (torch.tensor([0.5, 1.5]), torch.rand(2)),
         "binary_cross_entropy: all elements of input should be between 0 and 1"),
    _bad("binary_cross_entropy_with_logits-pos_weight", tbf.binary_cross_entropy_with_logits,
         lambda: (_x(), torch.rand(2, 3)), r"binary_cross_entropy_with_logits: pos_weight of shape \[2\] does not",
         lambda: {"pos_weight": torch.rand(2)}),
    _bad("binary_cross_entropy_with_logits-weight", tbf.binary_cross_entropy_with_logits,
         lambda: (_x(), torch.rand(2, 3)), r"binary_cross_entropy_with_logits: weight of shape \[4, 2, 3\]",
         lambda: {"weight": torch.rand(4, 2, 3)}),
    _bad("cross_entropy-batch", tbf.cross_entropy, lambda: (_x(), torch.tensor([0, 1, 2])),
         r"cross_entropy: input batch_size \(2\) must match target batch_size"),
    _bad("cross_entropy-target-bounds", tbf.cross_entropy, lambda: (_x(), torch.tensor([0, 5])),
         "cross_entropy: Target 5 is out of bounds"),
    _bad("cross_entropy-target-shape", tbf.cross_entropy, lambda: (torch.randn(2, 3, 4), torch.randint(0, 3, (2, 5))),
         r"cross_entropy: expected target of shape \[2, 4\], got \[2, 5\]"),
    _bad("cross_entropy-probs-ignore_index", tbf.cross_entropy, lambda: (_x(), torch.rand(2, 3)),
         "cross_entropy: ignore_index is not supported for class-probability", {"ignore_index": 1}),
    _bad("cross_entropy-weight", tbf.cross_entropy, lambda: (_x(), torch.tensor([0, 1])),
         r"cross_entropy: weight must have shape \[3\]", lambda: {"weight": torch.rand(4)}),
    _bad("mse_loss-target-list", tbf.mse_loss, lambda: (torch.randn(2), [1.0, 2.0]),
         "mse_loss: target must be a Tensor"),
    _bad("l1_loss-integer", tbf.l1_loss, lambda: (torch.arange(3), torch.arange(3)),
         "l1_loss: input must be floating point"),
    _bad("nll_loss-target-dtype", tbf.nll_loss, lambda: (_x(), torch.tensor([0.0, 1.0])),
         "nll_loss: class-index target must be int64"),
    _bad("nll_loss-weight-dtype", tbf.nll_loss, lambda: (_x(), torch.tensor([0, 1])),
         "nll_loss: weight has dtype torch.float64", lambda: {"weight": torch.rand(3, dtype=torch.float64)}),
    _bad("soft_margin_loss-reduction", tbf.soft_margin_loss, lambda: (_x(), _x().sign()),
         "soft_margin_loss: 'bad' is not a valid value for reduction", {"reduction": "bad"}),
    _bad("soft_margin_loss-shape", tbf.soft_margin_loss, lambda: (_x(), torch.randn(4, 3)),
         r"soft_margin_loss: The size of tensor a \(2\) must match"),
    _bad("multilabel_soft_margin_loss-weight", tbf.multilabel_soft_margin_loss, lambda: (_x(), torch.rand(2, 3)),
         r"multilabel_soft_margin_loss: weight of shape \[4\] does not broadcast", lambda: {"weight": torch.rand(4)}),
    _bad("multilabel_soft_margin_loss-target", tbf.multilabel_soft_margin_loss, lambda: (_x(), torch.rand(5, 2, 3)),
         r"multilabel_soft_margin_loss: target of shape \[5, 2, 3\]", native=None,
         why="torch broadcasts the input up to the target's (5, 2, 3) and averages over a batch the input never had"),
    _bad("margin_ranking_loss-dims", tbf.margin_ranking_loss, lambda: (_x(), _x(), torch.ones(3)),
         "margin_ranking_loss: input1, input2 and target must have the same number"),
    _bad("cosine_embedding_loss-3d", tbf.cosine_embedding_loss,
         lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2)),
         "cosine_embedding_loss: .*1D target tensor expects 2D input"),
    _bad("cosine_embedding_loss-2d-target", tbf.cosine_embedding_loss, lambda: (_x(), _x(), torch.ones(2, 2)),
         "cosine_embedding_loss: 0D or 1D target tensor expected"),
    _bad("hinge_embedding_loss-integer", tbf.hinge_embedding_loss, lambda: (torch.arange(3), torch.arange(3)),
         "hinge_embedding_loss: input must be floating point"),
    _bad("poisson_nll_loss-shape", tbf.poisson_nll_loss, lambda: (_x(), torch.rand(4, 3)),
         r"poisson_nll_loss: The size of tensor a \(4\) must match"),
    _bad("gaussian_nll_loss-negative-var", tbf.gaussian_nll_loss, lambda: (_x(), _x(), -torch.rand(2, 3)),
         "gaussian_nll_loss: var has negative entry"),
    _bad("gaussian_nll_loss-negative-float-var", tbf.gaussian_nll_loss, lambda: (_x(), _x(), -1.0),
         "gaussian_nll_loss: var has negative entry"),
    _bad("gaussian_nll_loss-var-shape", tbf.gaussian_nll_loss, lambda: (_x(), _x(), torch.rand(3)),
         r"gaussian_nll_loss: var of shape \[3\] is of incorrect size"),
    _bad("gaussian_nll_loss-reduction", tbf.gaussian_nll_loss, lambda: (_x(), _x(), torch.rand(2, 3)),
         "gaussian_nll_loss: 'avg' is not a valid value for reduction", {"reduction": "avg"}),
    _bad("triplet_margin_loss-margin", tbf.triplet_margin_loss, lambda: (_x(), _x(), _x()),
         "triplet_margin_loss: margin must be greater than 0", {"margin": 0.0}),
    _bad("triplet_margin_loss-dims", tbf.triplet_margin_loss, lambda: (_x(), _x(), torch.randn(3)),
         "triplet_margin_loss: anchor, positive and negative must have the same"),
    _bad("triplet_margin_loss-list", tbf.triplet_margin_loss, lambda: (_x(), _x(), [1.0, 2.0, 3.0]),
         "triplet_margin_loss: negative must be a Tensor"),
]
