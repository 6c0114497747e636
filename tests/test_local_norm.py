"""LocalResponseNorm against native: float64 over sizes (odd, even, wider than the channels), 3-D to 5-D inputs,
gradcheck/gradgradcheck, low precision, twin, route."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchbp
import torchbp.functional.local_norm as tbl
from util import assert_matches_native, gradchecks, grad_fn_names

DT = torch.float64
_GEN = torch.Generator().manual_seed(21)


def _x(*shape):
    return torch.randn(*shape, dtype=DT, generator=_GEN).requires_grad_()


@pytest.mark.parametrize("kw", [dict(size=3), dict(size=2, alpha=0.5, beta=0.6, k=2.0), dict(size=5, alpha=0.2),
                                dict(size=9, alpha=1.0, beta=1.2)])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 4), (1, 5, 2, 3, 2)])
def test_local_response_norm(kw, shape):
    native, twin = nn.LocalResponseNorm(**kw), torchbp.swap(nn.LocalResponseNorm(**kw))
    assert type(twin) is not nn.LocalResponseNorm
    x = _x(*shape)
    assert_matches_native(twin, native, (x,))
    for dtype in (torch.float32,) + ((torch.bfloat16,) if x.dim() == 3 else ()):  # avg_pool3d: no CPU bfloat16
        assert_matches_native(twin, native, (x,), dtype=dtype)


def test_gradchecks_route_and_errors():
    gradchecks(lambda t: tbl.local_response_norm(t, 3, alpha=0.5), (_x(1, 4, 3),))
    gradchecks(lambda t: tbl.local_response_norm(t, 2, alpha=0.3, beta=1.1, k=0.5), (_x(1, 3, 2, 2),))
    x = _x(2, 4, 3)
    with torchbp.manual_backward():
        y = F.local_response_norm(x, 3)
    assert grad_fn_names(y)[0] == "LocalResponseNormBackward"
    with pytest.raises(ValueError, match="local_response_norm: Expected 3D or higher"):
        tbl.local_response_norm(torch.randn(2, 3), 2)
