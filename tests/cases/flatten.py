"""torchbp.functional.flatten: flatten and unflatten, native's views (no δ Function: nothing to route), on
contiguous and transposed inputs."""
import torch

import torchbp.functional as tbf
from cases import Bad, sweep

NO_ROUTE = {"route": "a view, as native's: no δ Function to route to"}


def transposed(*shape):
    return torch.randn(shape).transpose(1, 3).requires_grad_()  # native copies here; so do we


CASES = []
for args in [(0, -1), (1, -1), (1, 2), (2, 2), (-2, -1)]:
    CASES += sweep("flatten", f"flatten{args}", tbf.flatten, torch.flatten,
                   float64=[("2x3x4x5", lambda args=args: (torch.randn(2, 3, 4, 5, requires_grad=True), *args)),
                            ("2x3x4x5-transposed", lambda args=args: (transposed(2, 3, 4, 5), *args))],
                   low=[("2x3x4x5", lambda args=args: (torch.randn(2, 3, 4, 5, requires_grad=True), *args))],
                   skip=dict(NO_ROUTE, vmap="dim 0 is flattened: vmap takes it away") if args[0] == 0 else NO_ROUTE)
for dim, sizes in [(1, (3, 2)), (-1, (5, 1)), (0, (-1, 2)), (1, [6])]:
    CASES += sweep("flatten", f"unflatten[{dim},{sizes}]", tbf.unflatten, torch.unflatten,
                   float64=[("4x6x5", lambda dim=dim, sizes=sizes: (torch.randn(4, 6, 5, requires_grad=True), dim, sizes))],
                   low=[("4x6x5", lambda dim=dim, sizes=sizes: (torch.randn(4, 6, 5, requires_grad=True), dim, sizes))],
                   skip=dict(NO_ROUTE, vmap="dim 0 is unflattened: vmap takes it away") if dim == 0 else NO_ROUTE,
                   vmap_dims=(2, None, None) if dim == 1 else None)  # keep dim 1 (the 6) in each example
CASES += sweep("flatten", "flatten(1)", tbf.flatten, torch.flatten,
               gradcheck=[("2x3x2", lambda: (torch.randn(2, 3, 2, requires_grad=True), 1))])
CASES += sweep("flatten", "unflatten[1,(2, 3)]", tbf.unflatten, torch.unflatten,
               gradcheck=[("2x6", lambda: (torch.randn(2, 6, requires_grad=True), 1, (2, 3)))])

BAD = [Bad("flatten.flatten-start-after-end", tbf.flatten, torch.flatten, lambda: (torch.randn(2, 3, 4), 2, 1),
           r"torchbp.functional.flatten: start_dim \(2\) cannot come after end_dim \(1\)"),
       Bad("flatten.unflatten-sizes", tbf.unflatten, torch.unflatten,
           lambda: (torch.randn(4, 6, 5, requires_grad=True), 1, (4, 2)), r"torchbp.functional.unflatten: sizes \[4, 2\] do not multiply to the size of dim 1 \(6\)")]
