"""torchbp.functional.attention: scaled dot-product attention (masks, causal, scale, GQA, broadcast batch)."""
import torch
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, VMAP, Bad, Case
from cases.linear import leaves

GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def mask(kind, shape):
    if kind == "bool":
        m = torch.rand(shape) > 0.3
        m[..., 0] = True  # no fully masked row here; those have their own test
        return m
    if kind == "additive":
        return torch.randn(shape)
    if kind == "additive_grad":
        return torch.randn(shape, requires_grad=True)
    return None


def sdpa_args(case):
    qs, ks, vs, kind, mshape, kw = case
    args = leaves(qs, ks, vs)
    return (args + (mask(kind, mshape),)) if kind else args, kw


SDPA_CASES = [  # (q, k, v shapes, mask kind, mask shape, kwargs)
    ((2, 3, 4, 8), (2, 3, 4, 8), (2, 3, 4, 8), None, None, {}),
    ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5), None, None, {}),  # Lq != Lk, Ev != E
    ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), "bool", (4, 6), {}),
    ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), "bool", (2, 1, 1, 6), {}),  # key padding style
    ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), "additive", (3, 4, 6), {}),
    ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), "additive_grad", (2, 3, 4, 6), {}),
    ((2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8), None, None, {"is_causal": True}),
    ((2, 3, 6, 8), (2, 3, 4, 8), (2, 3, 4, 8), None, None, {"is_causal": True}),  # Lq > Lk
    ((2, 3, 4, 8), (2, 3, 4, 8), (2, 3, 4, 8), None, None, {"scale": 0.3}),
    ((2, 3, 4, 16), (2, 3, 6, 16), (2, 3, 6, 4), "bool", (4, 6), {"scale": 1.5}),
    ((4, 8), (6, 8), (6, 3), None, None, {}),  # no batch dims
    ((5, 4, 8), (5, 6, 8), (5, 6, 8), "additive", (4, 6), {}),
    ((2, 3, 4, 8), (1, 3, 6, 8), (1, 3, 6, 8), None, None, {}),  # broadcast batch
    ((2, 4, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8), None, None, {"enable_gqa": True}),
    ((2, 4, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8), "bool", (5, 5), {"enable_gqa": True}),
    ((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8), None, None, {"enable_gqa": True, "is_causal": True}),
]
SDPA_SMALL = [  # gradgradcheck perturbs every element: keep these tiny
    ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 3), None, None, {}),
    ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), "bool", (3, 5), {"scale": 1.5}),
    ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), "additive_grad", (2, 3, 5), {}),
    ((2, 3, 4), (1, 3, 4), (1, 3, 4), None, None, {"is_causal": True}),
    ((1, 4, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), None, None, {"enable_gqa": True, "is_causal": True}),
]
SDPA_LOW = [SDPA_CASES[2], SDPA_CASES[4], SDPA_CASES[6], SDPA_CASES[13]]


def _id(case):
    qs, ks, vs, kind, mshape, kw = case
    return "attention.sdpa-" + "-".join("x".join(map(str, s)) for s in (qs, ks, vs)) + \
        (f"-{kind}{'x'.join(map(str, mshape))}" if kind else "") + "".join(f"-{k}={v}" for k, v in kw.items())


def _vmap(case):
    """Per example: q, k, v mapped over their first batch dim (k, v shared where they broadcast it), the mask
    shared."""
    qs, ks, vs, kind, mshape, kw = case
    if len(qs) == 2:
        return {"skip": {VMAP: "no batch dim: mapping one leaves a 1-D query"}}
    dims = (0, 0, 0) if ks[0] == qs[0] else (0, None, None)
    return {"vmap_dims": dims + ((None,) if kind else ())}


CASES = []
for kind, table in ((FLOAT64, SDPA_CASES), (GRADCHECK, SDPA_SMALL), (LOW, SDPA_LOW)):
    for case in table:
        if case[-1].get("enable_gqa") and not GQA:
            continue  # enable_gqa needs torch >= 2.5
        CASES.append(Case(_id(case), tbf.scaled_dot_product_attention, F.scaled_dot_product_attention,
                          lambda case=case: sdpa_args(case)[0], case[-1], checks=SWEEP[kind],
                          **(_vmap(case) if kind == FLOAT64 else {})))
CASES.append(Case("attention.sdpa-8x4x128x64-causal", tbf.scaled_dot_product_attention,
                  F.scaled_dot_product_attention, lambda: leaves((8, 4, 128, 64), (8, 4, 128, 64), (8, 4, 128, 64)),
                  {"is_causal": True}, checks=SWEEP[LOW], low_dtypes=(torch.float32, torch.bfloat16),
                  devices=("cpu",)))


# --- bad inputs: torchbp's error names the op --------------------------------------------------------------
def _q():
    return torch.randn(2, 3, 4, 8)


def _sdpa_bad(tag, args, match, kwargs=None, native=F.scaled_dot_product_attention, why=""):
    return Bad(f"attention.sdpa-{tag}", tbf.scaled_dot_product_attention, native, args, match,
               {} if kwargs is None else kwargs, why)


BAD = [
    _sdpa_bad("mask-and-causal", lambda: (_q(), _q(), _q(), torch.ones(4, 4, dtype=torch.bool)),
              r"scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both \(torch's CPU "
              "kernel takes both", {"is_causal": True}, native=None,
              why="torch's CPU kernel takes both and silently applies only the causal mask"),
    _sdpa_bad("key-dim", lambda: (_q(), torch.randn(2, 3, 4, 7), _q()),
              "scaled_dot_product_attention: query and key must share the last dim"),
    _sdpa_bad("mask-dtype", lambda: (_q(), _q(), _q(), torch.zeros(4, 4, dtype=torch.float64)),
              "scaled_dot_product_attention: attn_mask must be bool or have"),
] + ([
    _sdpa_bad("gqa-heads", lambda: (_q(), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)),
              "enable_gqa: query's 3 heads must be a multiple", {"enable_gqa": True}),
] if GQA else [])
