"""torchbp.functional.conv: convolutions (1-3-d, transposed, every padding mode) and pad, as modules
against their δ twins."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp.functional as tbf
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, VMAP, Bad, Case, module_case, shape_id

# (native module class, constructor kwargs, input shape)
CONV_CASES = [
    (nn.Conv1d, dict(in_channels=4, out_channels=5, kernel_size=3), (2, 4, 10)),
    (nn.Conv1d, dict(in_channels=4, out_channels=5, kernel_size=3, padding=1, bias=False), (2, 4, 10)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1), (2, 4, 11)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, groups=2), (2, 4, 12)),
    (nn.Conv1d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=3), (2, 4, 13)),
    (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (3, 7)),  # unbatched
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 7, 6)),
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=(3, 2), padding=(1, 2), bias=False), (2, 3, 7, 6)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (2, 3, 9, 8)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3), padding=1), (2, 3, 11, 10)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=(2, 1), padding=2), (2, 4, 9, 8)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1), (2, 4, 6, 6)),
    (nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, stride=2, bias=False), (2, 4, 9, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"), (2, 3, 6, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=(2, 4), padding="same", dilation=(1, 3)),
     (2, 3, 6, 9)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (2, 3, 6, 7)),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=2, dilation=2), (3, 9, 10)),
    # pointwise: δ_a and ∂J/∂W as matrix products on the CPU (one position per sample, a few, many)
    (nn.Conv2d, dict(in_channels=6, out_channels=4, kernel_size=1), (3, 6, 1, 1)),
    (nn.Conv2d, dict(in_channels=6, out_channels=4, kernel_size=1, bias=False), (3, 6, 2, 3)),
    (nn.Conv2d, dict(in_channels=5, out_channels=7, kernel_size=1), (2, 5, 5, 4)),
    (nn.Conv1d, dict(in_channels=4, out_channels=3, kernel_size=1), (2, 4, 17)),
] + [
    (cls, dict(in_channels=3, out_channels=4, kernel_size=3, padding=p, padding_mode=mode), shape)
    for mode in ("zeros", "reflect", "replicate", "circular")
    for cls, p, shape in ((nn.Conv1d, 2, (2, 3, 8)), (nn.Conv2d, (1, 2), (2, 3, 6, 7)))
]

# transposed: stride > 1 with output_padding, output_padding ≥ stride (allowed below the dilation: δ_a's
# convolution then overshoots a and is cut), dilation, groups, bias=False, unbatched
CONVT_CASES = [
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=5, kernel_size=3), (2, 4, 10)),
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1, output_padding=1),
     (2, 4, 9)),
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=6, kernel_size=3, dilation=3, output_padding=2, groups=2,
                              bias=False), (2, 4, 7)),
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), (3, 7)),  # unbatched
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 5, 4)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1,
                              groups=2), (2, 4, 5, 6)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0),
                              output_padding=(1, 2), bias=False), (2, 3, 4, 5)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, dilation=(2, 1), stride=2,
                              output_padding=1), (2, 4, 5, 5)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), (3, 6, 6)),
    (nn.ConvTranspose2d, dict(in_channels=5, out_channels=3, kernel_size=1), (2, 5, 4, 5)),
]

CONV_GRADCHECK = [  # small: gradgradcheck costs O(numel²)
    (nn.Conv1d, dict(in_channels=2, out_channels=2, kernel_size=2, padding="same", dilation=3), (1, 2, 6)),
    (nn.Conv1d, dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, padding_mode="reflect"), (1, 2, 5)),
    (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=2, stride=2, dilation=(1, 2), padding=1), (1, 2, 5, 4)),
    (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=2, groups=2, padding=(1, 0),
                     padding_mode="circular", bias=False), (1, 2, 3, 4)),
    (nn.ConvTranspose1d, dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1,
                              groups=2), (1, 2, 4)),
    (nn.ConvTranspose2d, dict(in_channels=2, out_channels=2, kernel_size=2, dilation=(3, 1), stride=(1, 2),
                              output_padding=(2, 1)), (1, 2, 3, 3)),
    (nn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=1), (2, 3, 1, 1)),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=1), (2, 2, 2, 2)),
    (nn.Conv1d, dict(in_channels=2, out_channels=2, kernel_size=1, bias=False), (2, 2, 16)),
]

CONV3D_CASES = [
    (nn.Conv3d, dict(in_channels=3, out_channels=4, kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=1,
                     dilation=(1, 1, 2)), (2, 3, 5, 6, 7)),
    (nn.Conv3d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=2,
                     padding_mode="reflect", bias=False), (4, 5, 5, 6)),  # unbatched
    (nn.ConvTranspose3d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                              output_padding=1, groups=2), (2, 4, 3, 4, 3)),
]
CONV3D_GRADCHECK = [(cls, {**kw, "in_channels": 2, "out_channels": 2, "groups": 1}, (1, 2, 3, 3, 3))
                    for cls, kw, _ in CONV3D_CASES]  # small: gradgradcheck costs O(numel²)

LOW_CASES = [CONV_CASES[2], CONV_CASES[11], CONV_CASES[13], CONV_CASES[-3], CONVT_CASES[1], CONVT_CASES[5],
             CONVT_CASES[7], CONVT_CASES[-1]] + [
    (nn.Conv2d, dict(in_channels=16, out_channels=24, kernel_size=1), (4, 16, L, L)) for L in (1, 2, 6)]


def unbatched(cls, kw, shape):
    """VMAP's skip for an unbatched input: its slice loses the channel dim, which no convolution takes."""
    return {VMAP: "an unbatched input's slice has no channel dim"} if len(shape) == int(cls.__name__[-2]) + 1 else {}


CASES = ([module_case("conv", *c, SWEEP[FLOAT64], skip=unbatched(*c)) for c in CONV_CASES + CONVT_CASES]
         + [module_case("conv", *c, [GRADCHECK]) for c in CONV_GRADCHECK + CONV3D_GRADCHECK]
         + [module_case("conv", *c, SWEEP[LOW]) for c in LOW_CASES]
         + [module_case("conv", *c, SWEEP[FLOAT64] + SWEEP[LOW], skip=unbatched(*c)) for c in CONV3D_CASES])

# --- pad ---------------------------------------------------------------------------------------------------
PAD_CASES = [  # (shape, pad, mode, value); negative pads crop in every mode, as native's
    ((2, 3, 4), (-1, 2), "reflect", None), ((2, 3, 4), (-1, 2), "replicate", None),
    ((2, 3, 4), (-1, 2), "circular", None),
    ((2, 3, 7), (2, 1), "constant", None), ((2, 3, 7), (-2, 3), "constant", 1.5),
    ((2, 3, 5, 6), (1, -2, 0, 3), "constant", -0.25), ((2, 3, 4, 5, 3), (1, 1, 0, 2, 1, 0), "constant", None),
    ((3, 7), (1, 2), "reflect", None), ((2, 3, 5, 6), (2, 1, 3, 0), "reflect", None),
    ((2, 3, 7), (3, 0), "replicate", None), ((2, 3, 5, 6), (1, 2, 2, 1), "replicate", None),
    ((2, 3, 7), (3, 2), "circular", None), ((2, 3, 5, 6), (1, 2, 0, 3), "circular", None),
]
for shape, pad, mode, value in PAD_CASES:
    numel = torch.Size(shape).numel()
    CASES.append(Case(f"conv.pad-{shape_id(shape)}-{pad}-{mode}-{value}", tbf.pad, F.pad,
                      lambda shape=shape, pad=pad: (torch.randn(shape, dtype=torch.float64, requires_grad=True), pad),
                      {"mode": mode, "value": value},
                      checks=SWEEP[FLOAT64] + ((GRADCHECK,) if numel <= 200 else ()),
                      skip={VMAP: f"a {mode} pad of {len(pad) // 2} dims takes an input of more than that"}
                      if mode != "constant" and len(shape) - 1 <= len(pad) // 2 else {},
                      why="" if numel <= 200 else "gradgradcheck of a large input is slow"))
CASES.append(Case("conv.pad-2x3x6-(2, -1)", tbf.pad, F.pad, lambda: (torch.randn(2, 3, 6, requires_grad=True), (2, -1)),
                  {"value": 0.5}, checks=SWEEP[LOW], devices=("cpu",)))


# --- refused inputs --------------------------------------------------------------------------------------
def _bad(op, tag, args, match, kwargs=None):
    return Bad(f"conv.{op}-{tag}", getattr(tbf, op), getattr(F, op), args, f"torchbp.functional.{op}: {match}",
               kwargs or {})


BAD = [
    _bad("conv2d", "channels", lambda: (torch.randn(2, 4, 5, 5), torch.randn(3, 3, 3, 3)), r"input has 4 channels"),
    _bad("conv2d", "2d", lambda: (torch.randn(4, 5), torch.randn(3, 4, 3, 3)),
         r"expected 3-D \(unbatched\) or 4-D \(batched\) input"),
    _bad("conv1d", "weight", lambda: (torch.randn(2, 4, 5), torch.randn(3, 4, 3, 3)), r"weight must be 3-D"),
    _bad("conv2d", "same-strided", lambda: (torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3)),
         r"padding='same' is not supported for strided", {"stride": 2, "padding": "same"}),
    _bad("conv2d", "bias", lambda: (torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(4)),
         r"bias must have shape \[3\]"),
    _bad("conv_transpose2d", "channels", lambda: (torch.randn(2, 4, 5, 5), torch.randn(3, 2, 3, 3)),
         r"input has 4 channels"),
    _bad("conv_transpose2d", "output_padding", lambda: (torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3)),
         r"output_padding \(2, 2\) must be smaller", {"stride": 2, "output_padding": 2}),
    _bad("conv_transpose2d", "bias", lambda: (torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3), torch.randn(2)),
         r"bias must have shape \[4\]", {"groups": 2}),
    _bad("conv_transpose1d", "weight", lambda: (torch.randn(2, 4, 5), torch.randn(4, 2, 3, 3)), r"weight must be 3-D"),
    _bad("conv_transpose1d", "groups", lambda: (torch.randn(2, 4, 5), torch.randn(4, 2, 3)),
         r"in_channels 4 not divisible by groups 3", {"groups": 3}),
    _bad("pad", "reflect-too-wide", lambda: (torch.randn(2, 3, 4), (5, 5)), "", {"mode": "reflect"}),  # F.pad's own error, named
]
