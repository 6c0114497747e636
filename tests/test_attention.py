"""δ scaled dot-product attention and MultiheadAttention (torchbp.functional.attention) beyond the common matrix
(tests/cases/attention.py drives sdpa's float64, gradcheck, low precision, autocast, vmap, routing and
refusals): fully masked rows, strided views, query blocks, empty sequences, CUDA's dropout refusal, autocast's
forward bit for bit, dropout masks, MultiheadAttention and transformer layers as twins."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchbp
import torchbp.functional as tbf
from torchbp import registry
from torchbp.functional import attention
from cases.attention import GQA, SDPA_CASES, SDPA_SMALL, sdpa_args
from cases.linear import leaves as _leaves
from util import DEVICES, assert_matches_native, delta_params, gradchecks, rel_err

def _sdpa_args(case):
    if case[-1].get("enable_gqa") and not GQA:
        pytest.skip("enable_gqa needs torch >= 2.5")
    return sdpa_args(case)


def _is_delta(t):
    return registry.is_delta_function(getattr(type(t.grad_fn), "_forward_cls", None))


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_sdpa_fully_masked_rows_match_native(kind):
    m = torch.rand(2, 4, 6) > 0.5
    m[:, :, 0] = True
    m[0, 1] = False  # row 1 of batch 0 sees no key
    mask = m if kind == "bool" else torch.zeros(m.shape).masked_fill(~m, float("-inf"))
    args = _leaves((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8)) + (mask[:, None],)
    assert_matches_native(tbf.scaled_dot_product_attention, F.scaled_dot_product_attention, args)


def test_sdpa_noncontiguous():
    q = torch.randn(2, 4, 3, 8).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 6, 3, 8).transpose(1, 2).requires_grad_()
    v = torch.randn(2, 3, 8, 6).transpose(-1, -2).requires_grad_()
    assert_matches_native(tbf.scaled_dot_product_attention, F.scaled_dot_product_attention, (q, k, v))


def _mha_split(x, H=3):
    """q, k, v as MultiheadAttention slices them from one projection (L, N, 3E): batch dims that matmul
    cannot fold into one."""
    L, N, E = x.shape[0], x.shape[1], x.shape[2] // 3
    return [t.view(L, N, H, E // H).permute(1, 2, 0, 3) for t in x.unflatten(-1, (3, E)).unbind(-2)]


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}], ids=str)
def test_sdpa_mha_strided_views(kw):
    x = torch.randn(5, 2, 3 * 12, requires_grad=True)
    assert_matches_native(lambda x: tbf.scaled_dot_product_attention(*_mha_split(x), **kw),
                          lambda x: F.scaled_dot_product_attention(*_mha_split(x), **kw), (x,))
    gradchecks(lambda x: tbf.scaled_dot_product_attention(*_mha_split(x), **kw), (torch.randn(3, 1, 3 * 6, requires_grad=True),))


@pytest.mark.parametrize("case", [c for c in SDPA_CASES if c[0][-2] > 1], ids=str)
def test_sdpa_backward_in_query_blocks(case, monkeypatch):
    """Long sequences: backward takes the queries in blocks (one row each here) to bound its memory."""
    monkeypatch.setattr(attention, "_PIECE_BYTES", {None: 1})
    args, kw = _sdpa_args(case)
    assert_matches_native(tbf.scaled_dot_product_attention, F.scaled_dot_product_attention, args, kw)


@pytest.mark.parametrize("case", SDPA_SMALL, ids=str)
def test_sdpa_backward_in_query_blocks_gradcheck(case, monkeypatch):
    monkeypatch.setattr(attention, "_PIECE_BYTES", {None: 1})
    args, kw = _sdpa_args(case)
    gradchecks(tbf.scaled_dot_product_attention, args, kw)


@pytest.mark.parametrize("lq,lk", [(0, 5), (4, 0)])
def test_sdpa_empty_sequences(lq, lk):
    args = _leaves((2, 3, lq, 8), (2, 3, lk, 8), (2, 3, lk, 8))
    assert_matches_native(tbf.scaled_dot_product_attention, F.scaled_dot_product_attention, args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sdpa_dropout_refused_on_cuda():
    """(The refusals both sides share are tests/cases/attention.py's BAD.)"""
    q = torch.randn(2, 3, 4, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"attention: dropout_p=0.1 is supported on the CPU only"):
        tbf.scaled_dot_product_attention(q, q, q, dropout_p=0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_autocast_forward_is_natives(device):
    """Under autocast the forward is native's bit for bit (dtypes and the gradients' low-precision rule are the
    matrix's AUTOCAST)."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    q, k, v = (t.to(device) for t in _leaves((2, 2, 4, 8), (2, 2, 5, 8), (2, 2, 5, 8)))
    mask = torch.randn(4, 5, device=device)
    with torch.autocast(device, dtype=dtype):
        ys = tbf.scaled_dot_product_attention(q, k, v, mask)
        yn = F.scaled_dot_product_attention(q, k, v, mask)
    assert ys.dtype == yn.dtype == dtype
    assert torch.equal(ys, yn)


# --- MultiheadAttention and the transformer encoder layer ------------------------------------------------

def _mha_run(module, args, kw):
    fresh = {id(a): a.detach().requires_grad_() for a in args}  # keeps `query is key is value`
    args = [fresh[id(a)] for a in args]
    out, w = module(*args, **kw)
    cost = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    if w is not None:
        cost = cost + (w * w).sum()
    grads = torch.autograd.grad(cost, list(fresh.values()) + list(module.parameters()))
    return [out, w, *grads], out


MHA_CASES = [  # (constructor kwargs, call kwargs, key/value differ from query)
    ({}, {}, False),
    ({}, {"need_weights": False}, False),
    ({}, {"key_padding_mask": "kpm"}, False),
    ({}, {"key_padding_mask": "kpm", "need_weights": False}, False),
    ({}, {"key_padding_mask": "kpm_float", "average_attn_weights": False}, False),
    ({}, {"attn_mask": "causal", "is_causal": True, "need_weights": False}, False),
    ({}, {"attn_mask": "bool", "need_weights": True}, False),
    ({}, {"attn_mask": "mask3d", "need_weights": False}, False),
    ({"batch_first": True}, {"key_padding_mask": "kpm"}, False),
    ({"batch_first": True}, {"need_weights": False}, True),
    ({"bias": False, "add_bias_kv": True, "add_zero_attn": True}, {}, True),
    ({"kdim": 3, "vdim": 5}, {"need_weights": False}, True),
    ({"kdim": 3, "vdim": 5, "batch_first": True}, {"key_padding_mask": "kpm"}, True),
]


def _mha_inputs(ctor, call, cross):
    L, S, N, E, H = 4, 6 if cross else 4, 2, 8, 2
    bf = ctor.get("batch_first", False)
    shape = (lambda n, e: (N, n, e) if bf else (n, N, e))
    q = torch.randn(shape(L, E), dtype=torch.float64)
    if cross:
        k = torch.randn(shape(S, ctor.get("kdim", E)), dtype=torch.float64)
        v = torch.randn(shape(S, ctor.get("vdim", E)), dtype=torch.float64)
        args = [q, k, v]
    else:
        args = [q]
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[1, -2:] = True
    masks = {"kpm": kpm, "kpm_float": torch.zeros(N, S, dtype=torch.float64).masked_fill(kpm, float("-inf")),
             "causal": torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64),
             "bool": torch.rand(L, S) > 0.7, "mask3d": torch.randn(N * H, L, S, dtype=torch.float64)}
    return args, {k: masks.get(v, v) if isinstance(v, str) else v for k, v in call.items()}


@pytest.mark.parametrize("ctor,call,cross", MHA_CASES, ids=str)
def test_multihead_attention_twin_float64(ctor, call, cross):
    native = torch.nn.MultiheadAttention(8, 2, **ctor).double()
    twin = torchbp.swap(copy.deepcopy(native), strict=True)
    assert isinstance(twin, torchbp.nn.MultiheadAttention)
    args, kw = _mha_inputs(ctor, call, cross)
    if not cross:
        args = args * 3  # self-attention: query is key is value, as in native's packed path
    res_n, _ = _mha_run(native, args, kw)
    res_s, out = _mha_run(twin, args, kw)
    for i, (s, n) in enumerate(zip(res_s, res_n)):
        assert (s is None) == (n is None), i
        if n is not None:
            assert s.shape == n.shape and rel_err(s, n) <= 1e-10, (i, rel_err(s, n))
    assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}


def test_multihead_attention_twin_gradcheck():
    twin = torchbp.swap(torch.nn.MultiheadAttention(4, 2, batch_first=True)).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    kpm = torch.tensor([[False, False, True], [False, False, False]])
    for need_weights in (True, False):
        f = lambda x: twin(x, x, x, key_padding_mask=kpm, need_weights=need_weights)[0]  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,)) and torch.autograd.gradgradcheck(f, (x,))


def test_multihead_attention_fast_path_only_without_graph():
    native = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    twin = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(2, 5, 8)
    with torch.no_grad():  # inference: native's fast path, identical results, no graph
        torch.testing.assert_close(twin(x, x, x)[0], native(x, x, x)[0])
    out = twin(x, x, x, need_weights=False)[0]  # eval but parameters need grad: δ path, never the fast path
    assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}
    torch.testing.assert_close(out, native(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_dropout_same_mask_as_native(need_weights):
    native = torch.nn.MultiheadAttention(8, 2, dropout=0.3).double()
    twin = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    results = []
    for m in (native, twin):
        torch.manual_seed(7)
        results.append(_mha_run(m, [x, x, x], {"need_weights": need_weights})[0])
    for s, n in zip(*results[::-1]):
        if n is not None:
            assert rel_err(s, n) <= 1e-10


def test_sdpa_dropout_same_mask_as_native():
    for kw in ({}, {"is_causal": True}, {"attn_mask": torch.rand(4, 4) > 0.3}):
        args = _leaves((2, 3, 4, 8), (2, 3, 4, 8), (2, 3, 4, 5))
        res = []
        for fn in (F.scaled_dot_product_attention, tbf.scaled_dot_product_attention):
            torch.manual_seed(3)
            res.append(assert_run(fn, args, dict(kw, dropout_p=0.4)))
        for s, n in zip(*res[::-1]):
            assert rel_err(s, n) <= 1e-10


def assert_run(fn, args, kw):
    args = [a.detach().double().requires_grad_() for a in args]
    out = fn(*args, **kw)
    return [out, *torch.autograd.grad(out.sin().sum(), args)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multihead_attention_low_precision(dtype):
    native = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    twin = torchbp.swap(copy.deepcopy(native))
    oracle = copy.deepcopy(native).double()
    x = torch.randn(2, 6, 16)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, -2:] = True
    for need_weights in (True, False):
        res = {}
        for name, m, dt in (("s", twin.to(dtype), dtype), ("n", native.to(dtype), dtype), ("o", oracle, torch.float64)):
            xx = x.to(dt)
            res[name], _ = _mha_run(m, [xx, xx, xx], {"key_padding_mask": kpm, "need_weights": need_weights})
        for s, n, o in zip(res["s"], res["n"], res["o"]):
            if o is not None:
                assert rel_err(s, o) <= 2 * rel_err(n, o) + {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]


def test_manual_backward_routes_unswapped_multihead_attention():
    mha = torch.nn.MultiheadAttention(8, 2).double()
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    with torchbp.manual_backward():
        res_s, out = _mha_run(mha, [x, x, x], {"need_weights": False})
    res_n, _ = _mha_run(mha, [x, x, x], {"need_weights": False})
    assert delta_params(mha, out) == {n for n, _ in mha.named_parameters()}
    for s, n in zip(res_s, res_n):
        if n is not None:
            assert rel_err(s, n) <= 1e-10


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_transformer_encoder_layer_swapped(norm_first, batch_first, train):
    native = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first,
                                              norm_first=norm_first).double().train(train)
    twin = torchbp.swap(copy.deepcopy(native))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    kpm = torch.zeros(2 if batch_first else 5, 5, dtype=torch.bool)
    kpm[-1, -1] = True
    kpm = kpm if batch_first else None  # padding mask shape is (N, S); keep it simple for seq-first
    results = []
    for m in (native, twin):
        xx = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout masks in both
        out = m(xx, src_key_padding_mask=kpm)
        results.append(torch.autograd.grad((out * out.detach().sin()).sum(), [xx, *m.parameters()]))
    for s, n in zip(*results[::-1]):
        assert rel_err(s, n) <= 1e-10
    out = twin(x.clone().requires_grad_(), src_key_padding_mask=kpm)
    # every parameter's gradient from δ formulas: fast path not taken while grads are needed
    assert delta_params(twin, out) == {n for n, _ in twin.named_parameters()}
