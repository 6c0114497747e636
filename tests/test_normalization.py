"""δ normalization, embedding, dropout, flatten: module cases against native in float64 (outputs,
gradients, running statistics), gradcheck, low precision against a float64 oracle, autocast, twins."""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from torchbp.functional import DeltaFunction
from util import DEVICES, LOW, assert_matches_native, gradchecks, rel_err

nn = torch.nn
HAS_RMS = hasattr(F, "rms_norm")


def is_delta(t):
    fn = t.grad_fn
    if type(fn).__name__.startswith("SqueezeBackward"):  # an unbatched input's batch dim, added and dropped
        fn = fn.next_functions[0][0]
    return fn is not None and issubclass(getattr(type(fn), "_forward_cls", type), DeltaFunction)


# --- modules against native: output, every gradient, buffers ------------------------------------

def compare_module(native, x, steps=2, train=True, device="cpu"):
    """Run native and its swapped copy ``steps`` times in float64; outputs and gradients agree to
    1e-10 and buffers (running stats, num_batches_tracked) are bitwise equal after each step."""
    native = native.double().to(device).train(train)
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is not type(native) and isinstance(twin, type(native))
    for step in range(steps):
        xs = x.detach().double().to(device).add(step).requires_grad_()
        xn = xs.detach().requires_grad_()
        ys, yn = twin(xs), native(xn)
        assert is_delta(ys), type(ys.grad_fn)
        v = torch.randn(yn.shape, dtype=yn.dtype, device=device)
        gs = torch.autograd.grad(ys, [xs, *twin.parameters()], v)
        gn = torch.autograd.grad(yn, [xn, *native.parameters()], v)
        assert rel_err(ys, yn) <= 1e-10
        for a, b in zip(gs, gn):
            assert rel_err(a, b) <= 1e-10, rel_err(a, b)
        for (k, a), (_, b) in zip(twin.state_dict().items(), native.state_dict().items()):
            assert torch.equal(a, b), k
    return twin


BN_CASES = [  # (module, input shape)
    (lambda: nn.BatchNorm1d(3), (4, 3)),
    (lambda: nn.BatchNorm1d(3), (4, 3, 5)),
    (lambda: nn.BatchNorm1d(3, momentum=0.3), (4, 3, 5)),
    (lambda: nn.BatchNorm1d(3, momentum=None), (4, 3)),
    (lambda: nn.BatchNorm1d(3, affine=False), (4, 3, 5)),
    (lambda: nn.BatchNorm1d(3, track_running_stats=False), (4, 3, 5)),
    (lambda: nn.BatchNorm2d(3), (2, 3, 4, 5)),
    (lambda: nn.BatchNorm2d(3, momentum=None), (2, 3, 4, 5)),
    (lambda: nn.BatchNorm2d(3, affine=False, momentum=0.5), (2, 3, 4, 5)),
    (lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False), (2, 3, 4, 5)),
    (lambda: nn.BatchNorm2d(3, eps=1e-3), (1, 3, 2, 2)),
    (lambda: nn.BatchNorm3d(2), (2, 2, 3, 2, 2)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", BN_CASES)
def test_batchnorm_module(make, shape, train, device):
    m = make()
    if m.affine:  # non-trivial parameters and running stats
        nn.init.normal_(m.weight), nn.init.normal_(m.bias)
    if m.track_running_stats:
        m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    twin = compare_module(m, torch.randn(shape) * 2 + 1, steps=3, train=train, device=device)
    if train and m.track_running_stats:
        assert int(twin.num_batches_tracked) == 3


IN_CASES = [  # (module, input shape); unbatched (C, L) / (C, H, W) inputs too
    (lambda: nn.InstanceNorm1d(3), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, track_running_stats=True), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, momentum=0.3), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, momentum=None), (4, 3, 5)),
    (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), (3, 6)),
    (lambda: nn.InstanceNorm1d(3), (3, 6)),
    (lambda: nn.InstanceNorm2d(3), (2, 3, 4, 5)),
    (lambda: nn.InstanceNorm2d(3, affine=True, eps=1e-3), (2, 3, 4, 5)),
    (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 4, 5)),
    (lambda: nn.InstanceNorm2d(3, track_running_stats=True, momentum=0.5), (3, 2, 2)),
    (lambda: nn.InstanceNorm3d(2, affine=True, track_running_stats=True), (2, 2, 3, 2, 2)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", IN_CASES)
def test_instancenorm_module(make, shape, train, device):
    """Per-(sample, channel) statistics; with track_running_stats the buffers are updated bitwise as native's
    (the batch mean of the per-instance updates) and, in eval, used (an affine map per channel)."""
    m = make()
    if m.affine:
        nn.init.normal_(m.weight), nn.init.normal_(m.bias)
    if m.track_running_stats:
        m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(m.running_mean)
    twin = compare_module(m, torch.randn(shape) * 2 + 1, steps=3, train=train, device=device)
    if m.track_running_stats:  # (momentum=None is 0.0 here, native's quirk: no cumulative average)
        assert torch.equal(twin.running_mean.float().cpu(), before) == (not train or m.momentum is None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("running", [True, False])
def test_instance_norm_functional_float64(use_input_stats, affine, running, device):
    if not (use_input_stats or running):
        pytest.skip("running statistics are required without input statistics")
    C = 3
    args = (torch.randn(4, C, 5, 2, requires_grad=True) * 3 + 1, torch.randn(C) if running else None,
            torch.rand(C) + 0.5 if running else None, torch.randn(C, requires_grad=True) if affine else None,
            torch.randn(C, requires_grad=True) if affine else None, use_input_stats, 0.2, 1e-4)
    assert_matches_native(tbf.instance_norm, F.instance_norm, args, device=device)
    if running:  # the buffers: updated bitwise as native's (unchanged in value without input statistics)
        rs, rn = [a.clone() for a in args[1:3]], [a.clone() for a in args[1:3]]
        tbf.instance_norm(args[0], *rs, *args[3:])
        F.instance_norm(args[0], *rn, *args[3:])
        assert all(torch.equal(a, b) for a, b in zip(rs, rn))


def test_batchnorm_eval_without_running_stats_uses_batch_stats():
    compare_module(nn.BatchNorm2d(3, track_running_stats=False), torch.randn(2, 3, 4, 4), train=False)


def test_batchnorm_functional_running_stats_bitwise():
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        rs = [torch.randn(4, dtype=dtype), torch.rand(4, dtype=dtype) + 0.5]
        rn = [t.clone() for t in rs]
        w = torch.randn(4, dtype=dtype, requires_grad=True)
        ys = tbf.batch_norm(x.to(dtype), *rs, w, None, True, 0.2, 1e-4)
        yn = F.batch_norm(x.to(dtype), *rn, w, None, True, 0.2, 1e-4)
        assert torch.equal(ys, yn) and all(torch.equal(a, b) for a, b in zip(rs, rn))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_functional_float64(training, affine, device):
    C = 3
    args = (torch.randn(4, C, 5, requires_grad=True) * 3, torch.randn(C), torch.rand(C) + 0.5,
            torch.randn(C, requires_grad=True) if affine else None,
            torch.randn(C, requires_grad=True) if affine else None, training, 0.1, 1e-5)
    assert_matches_native(tbf.batch_norm, F.batch_norm, args, device=device)


# (7,) with seed 0 is ill-conditioned: |δ_x| ≈ 2e-7 |δ|, native and δ both off by 2e-10 from exact
LN_CASES = [((2, 3, 4, 5), (5,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4, 5), (3, 4, 5)), ((9,), (9,)),
            ((6, 5), [5])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,nshape", LN_CASES)
def test_layer_norm_float64(shape, nshape, affine, device):
    ns = (nshape,) if isinstance(nshape, int) else nshape
    w = torch.randn(ns, requires_grad=True) if affine != "none" else None
    b = torch.randn(ns, requires_grad=True) if affine == "both" else None
    x = (torch.rand(shape) * 6 - 2).requires_grad_()  # not randn: util's v would be x's own draw
    assert_matches_native(tbf.layer_norm, F.layer_norm, (x, nshape, w, b, 1e-5), device=device)


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.LayerNorm(5), (2, 3, 5)), (lambda: nn.LayerNorm((4, 5)), (2, 3, 4, 5)),
    (lambda: nn.LayerNorm((3, 4, 5), elementwise_affine=False), (2, 3, 4, 5)),
    (lambda: nn.GroupNorm(1, 6), (2, 6, 4)), (lambda: nn.GroupNorm(2, 6), (2, 6, 3, 3)),
    (lambda: nn.GroupNorm(3, 6, affine=False), (2, 6, 5)), (lambda: nn.GroupNorm(3, 6), (3, 6)),
    (lambda: nn.Embedding(10, 4), None), (lambda: nn.Embedding(10, 4, padding_idx=2), None),
    (lambda: nn.Embedding(10, 4, scale_grad_by_freq=True), None),
] + ([(lambda: nn.RMSNorm(5), (2, 3, 5)), (lambda: nn.RMSNorm((4, 5), eps=1e-3), (2, 4, 5)),
      (lambda: nn.RMSNorm(5, elementwise_affine=False), (3, 5))] if hasattr(nn, "RMSNorm") else []))
def test_norm_and_misc_modules(make, shape):
    m = make()
    for p in m.parameters():
        nn.init.normal_(p)
    if isinstance(m, nn.Embedding):
        idx = torch.tensor([[1, 2, 2, 9], [0, 2, 1, 1]])
        native, twin = m.double(), torchbp.swap(copy.deepcopy(m.double()))
        ys, yn = twin(idx), native(idx)
        assert is_delta(ys) and torch.equal(ys, yn)
        v = torch.randn(yn.shape, dtype=torch.float64)
        (gs,), (gn,) = torch.autograd.grad(ys, [twin.weight], v), torch.autograd.grad(yn, [native.weight], v)
        assert rel_err(gs, gn) <= 1e-10
        return
    compare_module(m, torch.randn(shape) * 2 + 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 5), (2, 6, 3, 4)])
def test_group_norm_float64(groups, shape, device):
    if groups == 6 and len(shape) == 2:
        pytest.skip("one value per group: δ_x is exactly 0, native's is rounding noise")
    args = (torch.randn(shape, requires_grad=True) * 2 + 1, groups, torch.randn(6, requires_grad=True),
            torch.randn(6, requires_grad=True), 1e-5)
    assert_matches_native(tbf.group_norm, F.group_norm, args, device=device)
    assert_matches_native(tbf.group_norm, F.group_norm, (args[0], groups), device=device)


@pytest.mark.skipif(not HAS_RMS, reason="torch < 2.4 has no rms_norm")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nshape", [(5,), (4, 5)])
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_float64(nshape, weight, eps, device):
    args = (torch.randn(2, 3, 4, 5, requires_grad=True), nshape,
            torch.randn(nshape, requires_grad=True) if weight else None, eps)
    assert_matches_native(tbf.rms_norm, F.rms_norm, args, device=device)


# --- embedding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [{}, {"padding_idx": 0}, {"padding_idx": -1}, {"scale_grad_by_freq": True},
                                {"padding_idx": 3, "scale_grad_by_freq": True}, {"max_norm": 1.0},
                                {"max_norm": 2.0, "norm_type": 1.0}])
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
def test_embedding_float64(kw, idx_dtype, device):
    idx = torch.tensor([[0, 3, 3, 7], [7, 7, 1, 0], [9, 3, 2, 2]], dtype=idx_dtype)  # repeats, padding rows
    W = (torch.randn(10, 5) * 2).requires_grad_()
    assert_matches_native(tbf.embedding, F.embedding, (idx, W), kw, device=device)
    assert_matches_native(tbf.embedding, F.embedding, (idx[0, 0], W), kw, device=device)  # 0-d index


def test_embedding_max_norm_renorms_weight_like_native():
    W = torch.randn(10, 5) * 3
    idx = torch.tensor([1, 4, 4, 8])
    ws, wn = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    ys, yn = tbf.embedding(idx, ws, max_norm=1.0), F.embedding(idx, wn, max_norm=1.0)
    assert torch.equal(ys, yn) and torch.equal(ws, wn) and not torch.equal(ws, W)  # rows 1, 4, 8 renormed
    (gs,), (gn,) = torch.autograd.grad(ys.sum(), ws), torch.autograd.grad(yn.sum(), wn)
    assert torch.equal(gs, gn)


def test_embedding_refusals_name_the_op():
    W = torch.randn(5, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="torchbp.functional.embedding: sparse=True"):
        tbf.embedding(torch.tensor([1]), W, sparse=True)
    with pytest.raises(AssertionError, match="embedding: padding_idx must be within num_embeddings"):
        tbf.embedding(torch.tensor([1]), W, padding_idx=5)
    with pytest.raises(RuntimeError, match="embedding: input must hold indices"):
        tbf.embedding(torch.tensor([1.0]), W)
    with pytest.raises(RuntimeError, match="embedding: weight must be 2-D"):
        tbf.embedding(torch.tensor([1]), torch.randn(5))


# --- dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_dropout_same_mask_and_bits_as_native(p, dtype, layout, device):
    x0 = torch.randn(33, 65, dtype=dtype, device=device)
    x0 = x0.t() if layout == "transposed" else x0
    xs, xn = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    if layout == "transposed":
        xs, xn = x0.t().clone().t().requires_grad_(), x0.t().clone().t().requires_grad_()
    torch.manual_seed(7)
    ys = tbf.dropout(xs, p)
    state_s = torch.get_rng_state()
    torch.manual_seed(7)
    yn = F.dropout(xn, p)
    assert torch.equal(ys, yn) and torch.equal(state_s, torch.get_rng_state())  # same draws, same bits
    assert is_delta(ys)
    v = torch.randn_like(yn)
    (gs,), (gn,) = torch.autograd.grad(ys, xs, v), torch.autograd.grad(yn, xn, v)
    assert torch.equal(gs != 0, gn != 0)
    assert rel_err(gs, gn) <= (1e-10 if dtype == torch.float64 else 1e-2)


def test_dropout_saves_a_bool_mask():
    x = torch.randn(100, requires_grad=True)
    y = tbf.dropout(x, 0.3)
    saved = [t for t in y.grad_fn.saved_tensors]
    assert len(saved) == 1 and saved[0].dtype == torch.bool


def test_dropout_p0_p1_eval_and_inplace():
    x = torch.randn(4, 5, requires_grad=True)
    assert tbf.dropout(x, 0.0) is x and tbf.dropout(x, 0.5, training=False) is x
    y = tbf.dropout(x, 1.0)
    assert torch.equal(y, F.dropout(x, 1.0)) and is_delta(y)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.zeros_like(x))
    for p in (0.4, 1.0):
        h_s, h_n = x * 1.0, x * 1.0
        torch.manual_seed(3)
        out_s = tbf.dropout(h_s, p, inplace=True)
        torch.manual_seed(3)
        out_n = F.dropout(h_n, p, inplace=True)
        assert out_s is h_s and torch.equal(out_s, out_n)
        (gs,), (gn,) = torch.autograd.grad(out_s.sum(), x), torch.autograd.grad(out_n.sum(), x)
        torch.testing.assert_close(gs, gn)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        tbf.dropout(x, 1.5)


def test_dropout_twin_and_gradcheck():
    m = nn.Dropout(0.25)
    twin = torchbp.swap(copy.deepcopy(m))
    x = torch.randn(8, 9)
    torch.manual_seed(1)
    a = twin(x)
    torch.manual_seed(1)
    assert torch.equal(a, m(x))
    twin.eval()
    assert twin(x) is x

    def fn(x):
        torch.manual_seed(5)  # the same mask at every call gradcheck makes
        return tbf.dropout(x, 0.3)

    gradchecks(fn, (torch.randn(4, 5, requires_grad=True),))


FEATURE_DROPOUT = [(tbf.dropout1d, F.dropout1d, nn.Dropout1d, [(3, 4, 5), (4, 5)]),
                   (tbf.dropout2d, F.dropout2d, nn.Dropout2d, [(2, 3, 4, 5), (3, 4, 5)]),
                   (tbf.dropout3d, F.dropout3d, nn.Dropout3d, [(2, 3, 2, 4, 5), (3, 2, 4, 5)])]


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.3, 1.0])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("ours,native,module,shapes", FEATURE_DROPOUT, ids=["1d", "2d", "3d"])
def test_channel_dropout_same_channels_and_delta_as_native(ours, native, module, shapes, inplace, p, device):
    for shape in shapes:
        x = torch.randn(shape, dtype=torch.float64, device=device)
        xs, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(3)
        ys = ours(xs.clone() if inplace else xs, p, inplace=inplace)
        after_s = torch.rand(1, device=device)  # the same RNG draws used up, too
        torch.manual_seed(3)
        yn = native(xn.clone() if inplace else xn, p, inplace=inplace)
        assert torch.equal(ys, yn) and torch.equal(after_s, torch.rand(1, device=device)) and is_delta(ys)
        v = torch.randn_like(ys)
        assert torch.equal(torch.autograd.grad(ys, xs, v)[0], torch.autograd.grad(yn, xn, v)[0])
    twin = torchbp.swap(module(p))
    assert type(twin) is not module and isinstance(twin, module)
    torch.manual_seed(4)
    a = twin(x)
    torch.manual_seed(4)
    assert torch.equal(a, module(p)(x)) and twin.eval()(x) is x


def test_channel_dropout_gradcheck_and_refusals():
    def fn(x):
        torch.manual_seed(5)
        return tbf.dropout2d(x, 0.4)
    gradchecks(fn, (torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True),))
    with pytest.raises(RuntimeError, match="torchbp.functional.dropout1d: Expected 2D or 3D input"):
        tbf.dropout1d(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="torchbp.functional.dropout3d: dropout probability"):
        tbf.dropout3d(torch.randn(2, 3, 4, 5), 2.0)
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input"):
        tbf.dropout2d(torch.randn(2, 3, 4))


# --- flatten, unflatten, identity ----------------------------------------------------------------

@pytest.mark.parametrize("args", [(0, -1), (1, -1), (1, 2), (2, 2), (-2, -1)])
def test_flatten(args):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    assert_matches_native(tbf.flatten, torch.flatten, (x, *args))
    y = tbf.flatten(x, *args)
    assert not is_delta(y) and (y._base is x or y is x)  # structure: native's view (x itself for one dim)
    xt = x.detach().transpose(1, 3).requires_grad_()  # native copies here; so do we
    assert_matches_native(tbf.flatten, torch.flatten, (xt, *args))


@pytest.mark.parametrize("dim,sizes", [(1, (3, 2)), (-1, (5, 1)), (0, (-1, 2)), (1, [6])])
def test_unflatten(dim, sizes):
    x = torch.randn(4, 6, 5, requires_grad=True)
    assert_matches_native(tbf.unflatten, torch.unflatten, (x, dim, sizes))
    assert tbf.unflatten(x, dim, sizes)._base is x
    with pytest.raises(RuntimeError, match="torchbp.functional.unflatten: sizes"):
        tbf.unflatten(x, 1, (4, 2))


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Hardtanh])
def test_inplace_activation_after_flatten(act):
    """Flatten is structure (native's view), so in-place ops after it record into the graph of the
    caller's tensor as natively: Flatten -> ReLU(inplace=True) swaps, and a caller that goes on with the
    flattened tensor itself (not the in-place op's return value) gets native's gradients."""
    native = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), act(inplace=True), nn.Linear(12, 2)).double()
    twin = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    grads = []
    for m in (native, twin):
        m(x).square().sum().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert rel_err(a, b) <= 1e-10
    r = torchbp.audit(native, x)
    assert r.ok and r.coverage == 1.0, str(r)
    z = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for flatten, route in ((torch.flatten, contextlib.nullcontext), (tbf.flatten, torchbp.manual_backward)):
        w = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
        with route():
            h = flatten(z * 1, 1)
            h.mul_(w)  # the return values are dropped: the caller goes on with h
            act(inplace=True)(h)
            loss = (h * h).sum()
        grads.append(torch.autograd.grad(loss, (z, w)))
    for a, b in zip(*grads):
        assert rel_err(a, b) <= 1e-10
    h = tbf.flatten(torch.randn(2, 3, 2, requires_grad=True) * 1, 1)
    out = tbf.relu(h, inplace=True)
    assert out is h and (h >= 0).all()  # the caller's tensor was modified in place


@pytest.mark.parametrize("make,shape", [(lambda: nn.Flatten(), (2, 3, 4)), (lambda: nn.Flatten(0, 1), (2, 3, 4)),
                                        (lambda: nn.Unflatten(1, (2, 3)), (4, 6, 5))])
def test_flatten_twins_are_native_views(make, shape):
    x = torch.randn(shape, requires_grad=True)
    native, twin = make(), torchbp.swap(make())
    y = twin(x)
    assert torch.equal(y, native(x)) and y._base is x and not is_delta(y)


def test_identity_twin_returns_input():
    twin = torchbp.swap(nn.Sequential(nn.Identity(), nn.ReLU(inplace=True)))
    x = torch.randn(3, requires_grad=True)
    h = x * 1
    assert twin[0](h) is h
    twin(h).sum().backward()  # in-place after Identity keeps working
    assert torch.equal(x.grad, (x > 0).to(x.dtype))


# --- backward's two paths: in place on its own temporaries, and plain (double backward, vmap) ----------

NORMS = [  # (name, ours, native, float64 arguments, positions of x, weight, bias)
    ("layer_norm", tbf.layer_norm, F.layer_norm,
     lambda: (torch.randn(3, 4, 6) * 2 + 1, (6,), torch.randn(6), torch.randn(6)), (0, 2, 3)),
    ("layer_norm_2d", tbf.layer_norm, F.layer_norm,
     lambda: (torch.randn(3, 4, 6) * 2 + 1, (4, 6), torch.randn(4, 6), torch.randn(4, 6)), (0, 2, 3)),
    ("batch_norm", tbf.batch_norm, F.batch_norm,
     lambda: (torch.randn(5, 4, 3) * 2 + 1, None, None, torch.randn(4), torch.randn(4), True), (0, 3, 4)),
    ("batch_norm_eval", tbf.batch_norm, F.batch_norm,
     lambda: (torch.randn(5, 4, 3) * 2 + 1, torch.randn(4), torch.rand(4) + 0.5, torch.randn(4), torch.randn(4),
              False), (0, 3, 4)),
    ("group_norm", tbf.group_norm, F.group_norm,
     lambda: (torch.randn(3, 4, 5) * 2 + 1, 2, torch.randn(4), torch.randn(4)), (0, 2, 3)),
    ("instance_norm", tbf.instance_norm, F.instance_norm,
     lambda: (torch.randn(3, 4, 5) * 2 + 1, None, None, torch.randn(4), torch.randn(4)), (0, 3, 4)),
    ("instance_norm_eval", tbf.instance_norm, F.instance_norm,
     lambda: (torch.randn(3, 4, 5) * 2 + 1, torch.randn(4), torch.rand(4) + 0.5, torch.randn(4), torch.randn(4),
              False), (0, 3, 4)),
] + ([("rms_norm", tbf.rms_norm, F.rms_norm, lambda: (torch.randn(3, 4, 6) + 1, (6,), torch.randn(6)), (0, 2))]
     if HAS_RMS else [])


def _norm_args(make, pos, which):
    args = list(_float64(make()))
    for i, p in enumerate(pos):
        args[p].requires_grad_("xwb"[i] in which)
    return args


def _float64(args):
    return [a.double() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("which", ["x", "w", "b", "xb", "wb", "xwb"])
@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_norm_gradients_for_any_subset_of_inputs(name, ours, native, make, pos, which):
    if "b" in which and len(pos) < 3:
        pytest.skip("rms_norm has no bias")
    assert_matches_native(ours, native, _norm_args(make, pos, which))


@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_norm_plain_path_and_odd_grad_outputs(name, ours, native, make, pos):
    """create_graph takes the plain path, a sum over the batch gives an expanded (stride 0) δ, a
    transposed v a non-contiguous one: every one agrees with native."""
    args = _norm_args(make, pos, "xwb")
    leaves = [args[p] for p in pos]
    ys, yn = ours(*args), native(*args)
    v = torch.randn(yn.shape[::-1], dtype=yn.dtype).transpose(0, -1)
    u = torch.randn(yn.shape[1:], dtype=yn.dtype)
    for cost, create_graph in ((lambda y: (y * v).sum(), True), (lambda y: (y.sum(0) * u).sum(), False),
                               (lambda y: (y * v).sum(), False)):
        gs = torch.autograd.grad(cost(ys), leaves, retain_graph=True, create_graph=create_graph)
        gn = torch.autograd.grad(cost(yn), leaves, retain_graph=True, create_graph=create_graph)
        for a, b in zip(gs, gn):
            assert rel_err(a, b) <= 1e-10, rel_err(a, b)


@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_norm_empty_batch(name, ours, native, make, pos):
    if name == "batch_norm":
        pytest.skip("training batch_norm refuses an empty batch (native too)")
    if name.startswith("instance_norm"):  # native's own error (its batch_norm of a (1, 0, *) input), ours alike
        with pytest.raises(IndexError):
            native(*[a[:0] if i == 0 else a for i, a in enumerate(make())])
        pytest.skip("instance_norm refuses an empty batch (native too)")
    args = _norm_args(make, pos, "xwb")
    args[0] = args[0].detach()[:0].requires_grad_()
    leaves = [args[p] for p in pos]
    for a, b in zip(torch.autograd.grad(ours(*args).sum(), leaves), torch.autograd.grad(native(*args).sum(), leaves)):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_norm_batched_grad_outputs(name, ours, native, make, pos):
    """autograd.grad(is_grads_batched=True) vmaps backward over δ alone (the plain path)."""
    args = _norm_args(make, pos, "xwb")
    leaves = [args[p] for p in pos]
    ys, yn = ours(*args), native(*args)
    vs = torch.randn((3,) + tuple(yn.shape), dtype=yn.dtype)
    gs = torch.autograd.grad(ys, leaves, vs, is_grads_batched=True)
    gn = torch.autograd.grad(yn, leaves, vs, is_grads_batched=True)
    for a, b in zip(gs, gn):
        assert rel_err(a, b) <= 1e-10, rel_err(a, b)


def test_norm_per_example_gradients_under_vmap():
    x = torch.randn(4, 3, 6, dtype=torch.float64) * 2 + 1
    x4 = torch.randn(4, 6, 5, dtype=torch.float64) * 2 + 1
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    cases = [(lambda m: lambda xi, w, b: m.layer_norm(xi, (6,), w, b).pow(2).sum(), x),
             (lambda m: lambda xi, w, b: m.group_norm(xi[None], 3, w, b).pow(2).sum(), x4),
             (lambda m: lambda xi, w, b: m.instance_norm(xi[None], None, None, w, b).pow(2).sum(), x4)]
    if HAS_RMS:
        cases.append((lambda m: lambda xi, w, b: m.rms_norm(xi, (6,), w).pow(2).sum() + b.sum(), x))
    for cost, inp in cases:
        per = [torch.func.vmap(torch.func.grad(cost(m), argnums=(0, 1, 2)), in_dims=(0, None, None))(inp, w, b)
               for m in (tbf, F)]
        for a, c in zip(*per):
            assert rel_err(a, c) <= 1e-10, rel_err(a, c)


# --- gradcheck / gradgradcheck -------------------------------------------------------------------

GRADCHECK = [
    ("batch_norm_train", lambda x, w, b: tbf.batch_norm(x, None, None, w, b, True), (3, 2, 4), 2),
    ("batch_norm_eval", lambda x, w, b: tbf.batch_norm(x, torch.tensor([0.1, -0.2], dtype=x.dtype),
                                                        torch.tensor([0.5, 2.0], dtype=x.dtype), w, b, False),
     (3, 2, 4), 2),
    ("layer_norm", lambda x, w, b: tbf.layer_norm(x, (3, 4), w, b), (2, 3, 4), (3, 4)),
    ("group_norm", lambda x, w, b: tbf.group_norm(x, 2, w, b), (2, 4, 3), 4),
    ("instance_norm", lambda x, w, b: tbf.instance_norm(x, None, None, w, b), (2, 2, 4), 2),
    ("instance_norm_eval", lambda x, w, b: tbf.instance_norm(x, torch.tensor([0.1, -0.2], dtype=x.dtype),
                                                              torch.tensor([0.5, 2.0], dtype=x.dtype), w, b, False),
     (2, 2, 3), 2),
]


@pytest.mark.parametrize("name,fn,shape,pshape", GRADCHECK, ids=[g[0] for g in GRADCHECK])
def test_norm_gradcheck(name, fn, shape, pshape):
    gradchecks(fn, (torch.randn(shape, requires_grad=True), torch.randn(pshape, requires_grad=True),
                    torch.randn(pshape, requires_grad=True)))


@pytest.mark.skipif(not HAS_RMS, reason="torch < 2.4 has no rms_norm")
def test_rms_norm_gradcheck():
    gradchecks(lambda x, w: tbf.rms_norm(x, (4,), w, 1e-5),
               (torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)))


def test_misc_gradcheck():
    idx = torch.tensor([[1, 3, 3], [0, 1, 4]])
    # (padding_idx and scale_grad_by_freq are conventions, not derivatives: checked against native above)
    gradchecks(lambda W: tbf.embedding(idx, W), (torch.randn(5, 3, requires_grad=True),))
    gradchecks(lambda x: tbf.flatten(x, 1), (torch.randn(2, 3, 2, requires_grad=True),))
    gradchecks(lambda x: tbf.unflatten(x, 1, (2, 3)), (torch.randn(2, 6, requires_grad=True),))


# --- lower precision against the float64 oracle --------------------------------------------------

LOW_CASES = [
    ("batch_norm", tbf.batch_norm, F.batch_norm,
     lambda: (torch.randn(16, 8, 6, requires_grad=True), None, None, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True), True)),
    ("layer_norm", tbf.layer_norm, F.layer_norm,
     lambda: (torch.randn(16, 64, requires_grad=True) + 2, (64,), torch.randn(64, requires_grad=True),
              torch.randn(64, requires_grad=True))),
    ("group_norm", tbf.group_norm, F.group_norm,
     lambda: (torch.randn(4, 8, 32, requires_grad=True), 4, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True))),
    ("instance_norm", tbf.instance_norm, F.instance_norm,
     lambda: (torch.randn(4, 8, 32, requires_grad=True), None, None, torch.randn(8, requires_grad=True),
              torch.randn(8, requires_grad=True))),
    ("embedding", tbf.embedding, F.embedding,
     lambda: (torch.randint(0, 20, (64,)), torch.randn(20, 16, requires_grad=True))),
] + ([("rms_norm", tbf.rms_norm, F.rms_norm,
       lambda: (torch.randn(16, 64, requires_grad=True), (64,), torch.randn(64, requires_grad=True)))]
     if HAS_RMS else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name,ours,native,make", LOW_CASES, ids=[c[0] for c in LOW_CASES])
def test_low_precision(name, ours, native, make, dtype, device):
    assert_matches_native(ours, native, make(), dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", LOW)
def test_half_precision_cpu_backward_in_batch_chunks(dtype):
    """float16 / bfloat16 on the CPU: batch_norm's and group_norm's backward take the batch in chunks of
    512K elements (two and three here; group_norm's statistics are per sample, so they are chunked too),
    against the float64 oracle as native."""
    C = 16
    for args, ours, native in (
            ((torch.randn(10, C, 64, 64, requires_grad=True), None, None, torch.randn(C, requires_grad=True),
              torch.randn(C, requires_grad=True), True), tbf.batch_norm, F.batch_norm),
            ((torch.randn(9, 32, 48, 48, requires_grad=True) + 3, 4, torch.randn(32, requires_grad=True),
              torch.randn(32, requires_grad=True)), tbf.group_norm, F.group_norm)):
        assert args[0].numel() > 1 << 19
        assert_matches_native(ours, native, args, dtype=dtype)


@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_norm_compiles_in_one_graph(name, ours, native, make, pos):
    """torch.compile traces forward and backward without a graph break, and its gradients are native's."""
    dynamo = pytest.importorskip("torch._dynamo")
    args = _norm_args(make, pos, "xwb")
    leaves = [args[p] for p in pos]

    def cost(*leaves_):
        a = list(args)
        for p, t in zip(pos, leaves_):
            a[p] = t
        return ours(*a).square().sum()

    dynamo.reset()
    assert dynamo.explain(cost)(*leaves).graph_break_count == 0
    gs = torch.autograd.grad(torch.compile(cost, backend="aot_eager")(*leaves), leaves)
    gn = torch.autograd.grad(native(*args).square().sum(), leaves)
    for a, b in zip(gs, gn):
        assert rel_err(a, b) <= 1e-10, rel_err(a, b)


@pytest.mark.parametrize("name,ours,native,make,pos", NORMS, ids=[c[0] for c in NORMS])
def test_float32_inputs_with_a_large_mean(name, ours, native, make, pos):
    """|μ| = 100 σ: the sums behind ∂J/∂γ are taken over δ ⊙ (x − μ), not δ ⊙ x − μ·Σδ, whose
    cancellation would put ∂J/∂γ 10x further from float64 than native's (outside the policy)."""
    args = _norm_args(make, pos, "xwb")
    args[0] = (torch.randn((64,) + args[0].shape[1:], dtype=torch.float64) + 100).requires_grad_()
    assert_matches_native(ours, native, args, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_dtype_float32_params(dtype):
    """A float16/bfloat16 input with float32 parameters, which native allows: same dtypes out."""
    x = torch.randn(4, 6, 5).to(dtype)
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    cases = [(tbf.batch_norm, F.batch_norm, (x, torch.zeros(6), torch.ones(6), w, b, True)),
             (tbf.group_norm, F.group_norm, (x, 3, w, b)),
             (tbf.instance_norm, F.instance_norm, (x, torch.zeros(6), torch.ones(6), w, b)),
             (tbf.layer_norm, F.layer_norm, (x.transpose(1, 2), (6,), w, b))]
    for ours, native, args in cases:
        xs, xn = args[0].clone().requires_grad_(), args[0].clone().requires_grad_()
        ys, yn = ours(xs, *args[1:]), native(xn, *args[1:])
        assert ys.dtype == yn.dtype == dtype
        torch.testing.assert_close(ys, yn)
        gs = torch.autograd.grad(ys.float().sum(), [xs, w, b])
        gn = torch.autograd.grad(yn.float().sum(), [xn, w, b])
        for a, c in zip(gs, gn):
            assert a.dtype == c.dtype
            torch.testing.assert_close(a, c, rtol=5e-2, atol=5e-2)


def test_cpu_autocast_bf16_dtypes_follow_native():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.Unflatten(1, (3, 4)), nn.GroupNorm(3, 3),
                          nn.InstanceNorm1d(3, affine=True, track_running_stats=True), nn.Flatten(), nn.BatchNorm1d(12),
                          nn.Dropout(0.2), nn.Linear(12, 4))
    twin = torchbp.swap(copy.deepcopy(model))
    x = torch.randn(6, 8)
    outs = []
    for m in (model, twin):
        torch.manual_seed(4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        outs.append((y, torch.autograd.grad(y.float().sum(), list(m.parameters()))))
    (yn, gn), (ys, gs) = outs
    assert ys.dtype == yn.dtype
    torch.testing.assert_close(ys, yn, rtol=2e-2, atol=2e-2)
    for a, b in zip(gs, gn):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)
    for a, b in zip(twin.buffers(), model.buffers()):
        torch.testing.assert_close(a, b)


# --- twins, routing, errors ----------------------------------------------------------------------

def test_twins_keep_state_dict_and_isinstance():
    mods = [nn.BatchNorm1d(4), nn.BatchNorm2d(4, affine=False), nn.LayerNorm((2, 3)), nn.GroupNorm(2, 4),
            nn.InstanceNorm1d(4), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
            nn.Embedding(7, 3, padding_idx=1), nn.Dropout(0.1), nn.Flatten(), nn.Unflatten(1, (2, 2)),
            nn.Identity()] + ([nn.RMSNorm(3)] if hasattr(nn, "RMSNorm") else [])
    for m in mods:
        sd = copy.deepcopy(m.state_dict())
        twin = torchbp.swap(copy.deepcopy(m))
        assert isinstance(twin, type(m)) and type(twin) is not type(m), type(m)
        assert list(twin.state_dict()) == list(sd)
        twin.load_state_dict(sd)
        assert repr(twin).split("(")[1:] == repr(m).split("(")[1:]
        assert type(torchbp.unswap(twin)) is type(m)


def test_manual_backward_routes_native_modules_and_functions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.LayerNorm(6), nn.Flatten(), nn.Linear(18, 12),
                          nn.BatchNorm1d(12), nn.Dropout(0.1), nn.Unflatten(1, (3, 4)), nn.GroupNorm(3, 3)).double()
    ref = copy.deepcopy(model)
    idx = torch.tensor([[1, 2, 3], [4, 4, 0], [9, 1, 1]])
    torch.manual_seed(2)
    with torchbp.manual_backward():
        y = model(idx)
        extra = torch.flatten(y, 1).unflatten(1, (6, 2))
        extra = F.layer_norm(extra, (2,)) + (F.rms_norm(extra, (2,)) if HAS_RMS else 0)
    assert is_delta(y)
    torch.manual_seed(2)
    yn = ref(idx)
    en = torch.flatten(yn, 1).unflatten(1, (6, 2))
    en = F.layer_norm(en, (2,)) + (F.rms_norm(en, (2,)) if HAS_RMS else 0)
    assert torch.equal(y, yn)
    v1, v2 = torch.randn_like(y), torch.randn_like(extra)  # (sums of normalized outputs are constants)
    gs = torch.autograd.grad((y * v1).sum() + (extra * v2).sum(), list(model.parameters()))
    gn = torch.autograd.grad((yn * v1).sum() + (en * v2).sum(), list(ref.parameters()))
    for a, b in zip(gs, gn):  # (LayerNorm's bias gradient is exactly 0 here: BatchNorm follows the Linear)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(model.buffers(), ref.buffers()):
        assert torch.equal(a, b)


def test_bad_inputs_name_the_op():
    x = torch.randn(4, 6, 5)
    with pytest.raises(RuntimeError, match=r"layer_norm: normalized_shape=\[4\] must match"):
        tbf.layer_norm(x, (4,))
    with pytest.raises(RuntimeError, match=r"layer_norm: weight must have shape \[5\]"):
        tbf.layer_norm(x, (5,), torch.randn(4))
    with pytest.raises(RuntimeError, match="layer_norm: weight has dtype torch.float64"):
        tbf.layer_norm(x, (5,), torch.randn(5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="group_norm: the 6 channels .* divisible by num_groups=4"):
        tbf.group_norm(x, 4)
    with pytest.raises(RuntimeError, match=r"batch_norm: weight must have 6 elements"):
        tbf.batch_norm(x, None, None, torch.randn(5), None, True)
    with pytest.raises(RuntimeError, match="batch_norm: running_mean and running_var must be given"):
        tbf.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="batch_norm: Expected more than 1 value per channel"):
        tbf.batch_norm(torch.randn(1, 6), None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(6)(torch.randn(1, 6))  # native's type, for reference
    with pytest.raises(ValueError, match="instance_norm: Expected more than 1 spatial element"):
        tbf.instance_norm(torch.randn(2, 6, 1))
    with pytest.raises(ValueError, match="instance_norm: running_mean and running_var must either both be None"):
        tbf.instance_norm(x, torch.zeros(6))
    with pytest.raises(RuntimeError, match="instance_norm: running_mean and running_var must be given"):
        tbf.instance_norm(x, use_input_stats=False)
    with pytest.raises(RuntimeError, match=r"instance_norm: weight must have 6 elements"):
        tbf.instance_norm(x, weight=torch.randn(5))
    with pytest.raises(ValueError, match="expected input's size at dim=1 to match num_features"):  # the module's
        torchbp.swap(nn.InstanceNorm1d(5, affine=True))(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        torchbp.swap(nn.InstanceNorm1d(5))(x)
    with pytest.raises(RuntimeError, match="flatten: start_dim .* cannot come after end_dim"):
        tbf.flatten(x, 2, 1)
    with pytest.raises(ValueError, match="expected 2D or 3D input"):  # the module's own check
        torchbp.swap(nn.BatchNorm1d(6))(torch.randn(2, 6, 2, 2))


def test_noncontiguous_and_channels_last_inputs():
    x = torch.randn(5, 4, 6, 3, dtype=torch.float64)
    xt = x.transpose(0, 2).requires_grad_()  # (6, 4, 5, 3), non-contiguous
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    assert_matches_native(tbf.batch_norm, F.batch_norm, (xt, None, None, w, b, True))
    assert_matches_native(tbf.group_norm, F.group_norm, (xt, 2, w, b))
    assert_matches_native(tbf.layer_norm, F.layer_norm, (xt, (5, 3)))
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert_matches_native(tbf.batch_norm, F.batch_norm, (xc.transpose(0, 1), None, None, torch.randn(5), None, True))
    compare_module(nn.BatchNorm2d(4), xc, steps=1)
    assert_matches_native(tbf.instance_norm, F.instance_norm, (xt, None, None, w, b))
    compare_module(nn.InstanceNorm2d(4, affine=True, track_running_stats=True), xc, steps=1)


# --- embedding_bag ---------------------------------------------------------------------------------

# five bags: [1, 9, 2], [] (empty), [0, 5, 7], [7, 3], [2, 2] (all padding when padding_idx=2); repeats
BAG_IDX = [1, 9, 2, 0, 5, 7, 7, 3, 2, 2]
BAG_OFFSETS = [0, 3, 3, 6, 8]


def _bag_args(form, include_last_offset, idx_dtype=torch.int64):
    idx = torch.tensor(BAG_IDX, dtype=idx_dtype)
    if form == "2d":  # fixed-size bags of 2 (native refuses offsets and include_last_offset there)
        return idx.reshape(5, 2), None, False
    offsets = torch.tensor(BAG_OFFSETS + ([len(BAG_IDX)] if include_last_offset else []), dtype=idx_dtype)
    return idx, offsets, include_last_offset


def bags_from_embedding(input, weight, offsets=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
                        mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False,
                        padding_idx=None):
    """An oracle for sum/mean built from native F.embedding and index_add: native's CPU embedding_bag
    divides by the wrong count under scale_grad_by_freq (pytorch#190063, torch <= 2.13), F.embedding
    does not."""
    psw = per_sample_weights
    if input.dim() == 2:
        offsets = torch.arange(0, input.numel(), input.shape[1], device=input.device)
        input, psw = input.reshape(-1), psw.reshape(-1) if psw is not None else None
    elif include_last_offset:
        offsets = offsets[:-1]
    bag = torch.searchsorted(offsets, torch.arange(len(input), dtype=offsets.dtype, device=input.device),
                             right=True) - 1  # the bag of each position
    keep = torch.ones_like(input, dtype=torch.bool) if padding_idx is None else input != padding_idx % len(weight)
    e = F.embedding(input, weight, scale_grad_by_freq=scale_grad_by_freq) * keep.unsqueeze(1)
    e = e * psw.unsqueeze(1) if psw is not None else e
    z = e.new_zeros(len(offsets), weight.shape[1]).index_add(0, bag, e)
    if mode == "mean":
        z = z / z.new_zeros(len(offsets)).index_add(0, bag, keep.to(z.dtype)).clamp_min(1).unsqueeze(1)
    return z


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,psw,scale", [("sum", False, False), ("sum", True, False), ("sum", False, True),
                                            ("sum", True, True), ("mean", False, False), ("mean", False, True),
                                            ("max", False, False)])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
@pytest.mark.parametrize("form", ["offsets", "last_offset", "2d"])
def test_embedding_bag_float64(form, padding_idx, mode, psw, scale, device):
    """Every mode/option combination torch supports: output, ∂J/∂W and ∂J/∂w (per-sample weights)."""
    idx, offsets, last = _bag_args(form, form == "last_offset")
    W = (torch.randn(10, 5) * 2).requires_grad_()
    kw = dict(mode=mode, padding_idx=padding_idx, scale_grad_by_freq=scale, include_last_offset=last)
    if psw:
        kw["per_sample_weights"] = torch.rand(idx.shape, requires_grad=True)
    native = bags_from_embedding if scale else F.embedding_bag  # see bags_from_embedding
    assert_matches_native(tbf.embedding_bag, native, (idx, W, offsets), kw, device=device)
    if mode != "max" and not scale:  # the oracle itself agrees with native where native is right
        assert_matches_native(bags_from_embedding, F.embedding_bag, (idx, W, offsets), kw, device=device)


def test_embedding_bag_int32_indices_and_noncontiguous_weight():
    idx, offsets, _ = _bag_args("offsets", False, torch.int32)
    W = torch.randn(5, 10, dtype=torch.float64).t().requires_grad_()  # (10, 5), non-contiguous
    for mode in ("sum", "mean", "max"):
        assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W, offsets), {"mode": mode})
        assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W, offsets.long()), {"mode": mode})
    assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx.reshape(5, 2), W, None), {"mode": "sum"})


def test_embedding_bag_empty_input_and_per_sample_weight_grad_alone():
    W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("sum", "mean", "max"):  # no indices at all: two empty bags
        assert_matches_native(tbf.embedding_bag, F.embedding_bag,
                              (torch.tensor([], dtype=torch.long), W, torch.tensor([0, 0])), {"mode": mode})
    idx, offsets = torch.tensor([1, 3, 3, 0]), torch.tensor([0, 1])
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)  # only the per-sample weights need a gradient
    assert_matches_native(tbf.embedding_bag, F.embedding_bag, (idx, W.detach(), offsets),
                          {"mode": "sum", "per_sample_weights": w, "padding_idx": 3})


def test_embedding_bag_max_norm_renorms_weight_like_native():
    W = torch.randn(10, 5) * 3
    idx, offsets = torch.tensor([1, 4, 4, 8, 2]), torch.tensor([0, 2])
    ws, wn = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    ys = tbf.embedding_bag(idx, ws, offsets, max_norm=1.0, mode="sum")
    yn = F.embedding_bag(idx, wn, offsets, max_norm=1.0, mode="sum")
    assert torch.allclose(ys, yn) and torch.equal(ws, wn) and not torch.equal(ws, W)  # rows 1, 2, 4, 8 renormed
    (gs,), (gn,) = torch.autograd.grad(ys.sum(), ws), torch.autograd.grad(yn.sum(), wn)
    assert torch.equal(gs, gn)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_gradcheck(mode):
    """gradcheck and gradgradcheck (torch's own embedding_bag has no double backward: its backward is one
    kernel, _embedding_bag_backward; the δ formulas are plain ops, so ours has one)."""
    idx, offsets, _ = _bag_args("offsets", False)
    W = torch.randn(10, 3, requires_grad=True)
    gradchecks(lambda W: tbf.embedding_bag(idx, W, offsets, mode=mode, padding_idx=2), (W,))
    if mode == "sum":
        gradchecks(lambda W, w: tbf.embedding_bag(idx, W, offsets, mode="sum", per_sample_weights=w),
                   (W, torch.rand(10, requires_grad=True)))
        # (scale_grad_by_freq is a convention, not a derivative: checked against the oracle above)
        gradchecks(lambda W, w: tbf.embedding_bag(idx.reshape(5, 2), W, mode="sum", per_sample_weights=w,
                                                  padding_idx=7),
                   (W, torch.rand(5, 2, requires_grad=True)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["sum", "mean", "max", "psw"])
def test_embedding_bag_low_precision(mode, dtype, device):
    g = torch.Generator().manual_seed(0)
    idx, offsets = torch.randint(0, 20, (96,), generator=g), torch.tensor([0, 5, 5, 30, 64, 90])
    kw = {"mode": "sum" if mode == "psw" else mode}
    if mode == "psw":
        kw["per_sample_weights"] = torch.rand(96, generator=g).requires_grad_()
    assert_matches_native(tbf.embedding_bag, F.embedding_bag,
                          (idx, torch.randn(20, 16, generator=g).requires_grad_(), offsets), kw,
                          dtype=dtype, device=device)


@pytest.mark.parametrize("kw", [{"mode": "sum"}, {"mode": "mean", "padding_idx": 0}, {"mode": "max"},
                                {"mode": "sum", "include_last_offset": True}])
def test_embedding_bag_twin_swapped(kw):
    native = nn.EmbeddingBag(10, 4, **kw).double()
    twin = torchbp.swap(copy.deepcopy(native))
    assert type(twin) is torchbp.nn.EmbeddingBag and isinstance(twin, nn.EmbeddingBag)
    assert repr(twin).replace("[δ]", "") == repr(native) and twin.state_dict().keys() == native.state_dict().keys()
    idx, offsets, _ = _bag_args("last_offset" if kw.get("include_last_offset") else "offsets",
                                kw.get("include_last_offset", False))
    args = [(idx, offsets), (idx.reshape(5, 2),)]
    if kw["mode"] == "sum":
        args.append((idx, offsets, torch.rand(10, dtype=torch.float64)))
    for a in args:
        if kw.get("include_last_offset") and len(a) == 1:
            continue
        ys, yn = twin(*a), native(*a)
        assert is_delta(ys) and torch.allclose(ys, yn, rtol=1e-14, atol=0)
        v = torch.randn(yn.shape, dtype=torch.float64)
        (gs,), (gn,) = torch.autograd.grad(ys, [twin.weight], v), torch.autograd.grad(yn, [native.weight], v)
        assert rel_err(gs, gn) <= 1e-10


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_audit_full_coverage_with_embedding_bag(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(20, 6, mode=mode), nn.Linear(6, 3)).double()
    r = torchbp.audit(model, torch.randint(0, 20, (4, 5)))
    assert r.ok and r.coverage == 1.0, str(r)


def test_embedding_bag_routes_under_manual_backward():
    from torchbp.functional.sparse import EmbeddingBag
    W = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(10, dtype=torch.float64, requires_grad=True)
    idx, offsets, _ = _bag_args("offsets", False)
    module = nn.EmbeddingBag(10, 4, mode="max").double()
    calls = [(lambda: F.embedding_bag(idx, W, offsets, mode="sum", per_sample_weights=w, padding_idx=-1), [W, w]),
             (lambda: F.embedding_bag(idx.reshape(5, 2), W), [W]),
             (lambda: torch.embedding_bag(W, idx, offsets, False, 2, False, None, False, 9)[0], [W]),
             (lambda: module(idx, offsets), [module.weight])]
    for f, leaves in calls:
        yn = f()
        with torchbp.manual_backward():
            ys = f()
        assert type(ys.grad_fn)._forward_cls is EmbeddingBag and torch.equal(ys, yn)
        v = torch.randn_like(yn)
        for a, b in zip(torch.autograd.grad(ys, leaves, v), torch.autograd.grad(yn, leaves, v)):
            assert rel_err(a, b) <= 1e-10
    with torchbp.manual_backward():  # torch.embedding_bag's four outputs, as native's
        out = torch.embedding_bag(W, idx, offsets, False, 1, False, None, False, None)
    for a, b in zip(out, torch.embedding_bag(W, idx, offsets, False, 1, False, None, False, None)):
        assert torch.equal(a, b)


def test_embedding_bag_bad_inputs_name_the_op():
    W, idx, offsets = torch.randn(5, 3, requires_grad=True), torch.tensor([1, 2, 4]), torch.tensor([0, 2])
    cases = [
        (RuntimeError, "embedding_bag: sparse=True", dict(sparse=True)),
        (RuntimeError, "embedding_bag: padding_idx must be within num_embeddings", dict(padding_idx=5)),
        (ValueError, "embedding_bag: mode must be 'sum', 'mean' or 'max'", dict(mode="min")),
        (ValueError, "embedding_bag: mode='max' does not support scale_grad_by_freq",
         dict(mode="max", scale_grad_by_freq=True)),
        (NotImplementedError, "embedding_bag: per_sample_weights is only supported for mode='sum'",
         dict(per_sample_weights=torch.rand(3))),
        (ValueError, r"embedding_bag: per_sample_weights must have the input's shape \[3\]",
         dict(mode="sum", per_sample_weights=torch.rand(4))),
        (RuntimeError, "embedding_bag: per_sample_weights .* must have weight's dtype",
         dict(mode="sum", per_sample_weights=torch.rand(3, dtype=torch.float64))),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match="torchbp.functional." + msg):
            tbf.embedding_bag(idx, W, offsets, **kw)
    with pytest.raises(RuntimeError, match="embedding_bag: input must hold indices"):
        tbf.embedding_bag(idx.double(), W, offsets)
    with pytest.raises(ValueError, match="embedding_bag: weight must be 2-D"):
        tbf.embedding_bag(idx, torch.randn(5), offsets)
    with pytest.raises(ValueError, match="embedding_bag: a 1-D input needs 1-D offsets"):
        tbf.embedding_bag(idx, W)
    with pytest.raises(ValueError, match="embedding_bag: offsets must be None for a 2-D input"):
        tbf.embedding_bag(idx.reshape(3, 1), W, offsets)
    with pytest.raises(ValueError, match="embedding_bag: input must be 1-D .* or 2-D .*, got 3-D"):
        tbf.embedding_bag(idx.reshape(3, 1, 1), W)
    with pytest.raises(RuntimeError, match="embedding_bag: offsets must hold positions"):
        tbf.embedding_bag(idx, W, offsets.double())
    nested = torch.nested.nested_tensor([idx, idx[:1]], layout=torch.jagged)
    with pytest.raises(RuntimeError, match="embedding_bag: per_sample_weights must be nested when input is"):
        tbf.embedding_bag(nested, W, mode="sum", per_sample_weights=torch.rand(4))


def test_embedding_bag_nested_input():
    nested = torch.nested.nested_tensor([torch.tensor([1, 2, 2]), torch.tensor([4])], layout=torch.jagged)
    w = torch.nested.nested_tensor_from_jagged(torch.rand(4, dtype=torch.float64), nested.offsets())  # same rows
    W = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for kw in ({"mode": "mean"}, {"mode": "max"}, {"mode": "sum", "per_sample_weights": w}):
        ys, yn = tbf.embedding_bag(nested, W, **kw), F.embedding_bag(nested, W, **kw)
        assert is_delta(ys) and torch.allclose(ys, yn, rtol=1e-14, atol=0)
        (gs,), (gn,) = torch.autograd.grad(ys.sum(), W), torch.autograd.grad(yn.sum(), W)
        assert rel_err(gs, gn) <= 1e-10
