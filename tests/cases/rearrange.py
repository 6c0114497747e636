"""torchbp.functional.rearrange: unfold / fold (nn.Unfold / Fold) and channel_shuffle (nn.ChannelShuffle)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp.functional.rearrange as tbr
from cases import FLOAT64, GRADCHECK, LOW, SWEEP, Bad, Case, module_case

UNFOLD = [dict(kernel_size=2), dict(kernel_size=(2, 3), stride=2, padding=1),
          dict(kernel_size=3, dilation=(2, 1), padding=(2, 0), stride=(1, 2))]
ALL = SWEEP[FLOAT64] + SWEEP[LOW]
UNBATCHED = {"vmap": "an unbatched input: vmap leaves one dim too few"}

CASES = []
for kw in UNFOLD:
    for shape in [(2, 3, 7, 8), (3, 7, 8)]:
        cols = tuple(nn.Unfold(**kw)(torch.zeros(shape)).shape)
        skip = UNBATCHED if len(shape) == 3 else {}
        CASES += [module_case("rearrange", nn.Unfold, kw, shape, ALL, skip=skip, delta_ran=True),
                  module_case("rearrange", nn.Fold, dict(output_size=(7, 8), **kw), cols, ALL, skip=skip,
                              delta_ran=True)]
CASES += [
    Case("rearrange.unfold[kernel_size=2,padding=1,stride=2]-1x2x3x4", tbr.unfold, F.unfold,
         lambda: (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True), 2), dict(padding=1, stride=2),
         checks=(GRADCHECK,)),
    Case("rearrange.fold[(3, 4),kernel_size=2,padding=1,stride=1]-1x8x20", tbr.fold, F.fold,
         lambda: (torch.randn(1, 8, 20, dtype=torch.float64, requires_grad=True), (3, 4), 2),
         dict(padding=1, stride=1), checks=(GRADCHECK,)),
]
for shape, groups in [((2, 6, 3, 4), 3), ((2, 6, 5), 2), ((1, 8, 2, 2, 2), 4), ((3, 6, 4), 6)]:
    CASES.append(module_case("rearrange", nn.ChannelShuffle, dict(groups=groups), shape,
                             ALL, delta_ran=True, vmap_dims=(2,),  # channels stay dim 1
                             skip={"vmap": "a 3-D input: vmap leaves 2 dims, channel_shuffle takes 3 or more"}
                             if len(shape) == 3 else {}))
for shape, groups in [((1, 6, 2, 2), 3), ((1, 6, 2), 2), ((1, 8, 1, 1, 2), 4), ((1, 6, 2), 6)]:  # gradgradcheck: O(n²)
    CASES.append(module_case("rearrange", nn.ChannelShuffle, dict(groups=groups), shape, (GRADCHECK,)))

BAD = [
    Bad("rearrange.channel_shuffle-groups", tbr.channel_shuffle, F.channel_shuffle, lambda: (torch.randn(1, 6, 2), 4),
        "channel_shuffle: groups=4 must be a positive int dividing the 6"),
    Bad("rearrange.unfold-2d", tbr.unfold, F.unfold, lambda: (torch.randn(2, 3), 2), "unfold: expected 3-D"),
]
