"""torchbp.functional.local_norm: LocalResponseNorm (the nn twin and the functional form) over sizes (odd, even,
wider than the channels) and 3-D to 5-D inputs."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp.functional.local_norm as tbl
from cases import FLOAT64, GRADCHECK, LOW, LOW_DTYPES, SWEEP, Bad, Case, kw_id, module_case, shape_id

KWS = [dict(size=3), dict(size=2, alpha=0.5, beta=0.6, k=2.0), dict(size=5, alpha=0.2), dict(size=9, alpha=1.0, beta=1.2)]
SHAPES = [(2, 6, 5), (2, 6, 3, 4), (1, 5, 2, 3, 2)]

CASES = []
for kw in KWS:
    for shape in SHAPES:
        # 4-D and 5-D inputs pool with avg_pool3d, which has no CPU bfloat16 / float16 kernel
        CASES.append(module_case("local_norm", nn.LocalResponseNorm, kw, shape, SWEEP[FLOAT64] + SWEEP[LOW],
                                 low_dtypes=LOW_DTYPES if len(shape) == 3 else LOW_DTYPES[:1], delta_ran=True,
                                 vmap_dims=(0,), skip={"vmap": "vmap leaves a 2-D input: not a batch of channels"}
                                 if len(shape) == 3 else {}))
for (size, kw), shape in [((3, dict(alpha=0.5)), (1, 4, 3)), ((2, dict(alpha=0.3, beta=1.1, k=0.5)), (1, 3, 2, 2))]:
    CASES.append(Case(f"local_norm.local_response_norm[size={size},{kw_id(kw)}]-{shape_id(shape)}",
                      tbl.local_response_norm, F.local_response_norm,
                      lambda shape=shape, size=size: (torch.randn(shape, dtype=torch.float64, requires_grad=True), size),
                      kw, checks=(GRADCHECK,)))

BAD = [Bad("local_norm.local_response_norm-2d", tbl.local_response_norm, F.local_response_norm,
           lambda: (torch.randn(2, 3), 2), "local_response_norm: Expected 3D or higher")]
