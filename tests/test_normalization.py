"""δ normalization (torchbp.functional.normalization) beyond the common matrix (tests/cases/normalization.py
drives the functions' and the buffer-free modules' float64, gradcheck, low precision, autocast, vmap, routing
and refusals): modules over several steps (outputs, gradients, running statistics bitwise), any subset of
inputs, the backward's two paths, empty and batched δ, torch.compile, mixed dtypes, a model under autocast
(buffers too), twins, routed modules."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from util import DEVICES, LOW, assert_matches_native, is_delta, rel_err

nn = torch.nn
HAS_RMS = hasattr(F, "rms_norm")


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
def test_instance_norm_functional_running_stats_bitwise(use_input_stats, affine, device):
    """The buffers: updated bitwise as native's (unchanged in value without input statistics); the gradients
    of these inputs are tests/cases/normalization.py's."""
    C = 3
    args = (torch.randn(4, C, 5, 2, device=device) * 3 + 1, torch.randn(C, device=device),
            torch.rand(C, device=device) + 0.5, torch.randn(C, device=device) if affine else None,
            torch.randn(C, device=device) if affine else None, use_input_stats, 0.2, 1e-4)
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


@pytest.mark.parametrize("make", [lambda: nn.Embedding(10, 4), lambda: nn.Embedding(10, 4, padding_idx=2),
                                  lambda: nn.Embedding(10, 4, scale_grad_by_freq=True)])
def test_embedding_module(make):
    """(LayerNorm, GroupNorm and RMSNorm, without buffers, are tests/cases/normalization.py's module cases.)"""
    m = make()
    nn.init.normal_(m.weight)
    idx = torch.tensor([[1, 2, 2, 9], [0, 2, 1, 1]])
    native, twin = m.double(), torchbp.swap(copy.deepcopy(m.double()))
    ys, yn = twin(idx), native(idx)
    assert is_delta(ys) and torch.equal(ys, yn)
    v = torch.randn(yn.shape, dtype=torch.float64)
    (gs,), (gn,) = torch.autograd.grad(ys, [twin.weight], v), torch.autograd.grad(yn, [native.weight], v)
    assert rel_err(gs, gn) <= 1e-10


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


def test_instance_norm_channel_mismatch_warns_as_native():
    """Without affine parameters a channel count other than num_features only warns, as native's module does
    (the refusals are tests/cases/normalization.py's BAD)."""
    with pytest.warns(UserWarning, match="does not match num_features"):
        torchbp.swap(nn.InstanceNorm1d(5))(torch.randn(4, 6, 5))


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
