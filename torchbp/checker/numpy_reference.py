"""``reference="numpy"``: rows holding a float64 copy of the subject against torchbp.reference's
independent NumPy back-propagation."""
from __future__ import annotations

import torch

from . import compare
from .losses import losses_for
from .passes import KeepGrads, Pass, routing
from .report import Row
from .state import converted_copy, digest


def numpy_rows(reference, model, x, y, loss_fn, device):
    """Per Linear layer the δ arriving at it and ∂J/∂W, ∂J/∂b (quantity "… (numpy)")."""
    if reference not in ("numpy", True):
        raise ValueError(f"torchbp.audit: reference must be None or 'numpy', got {reference!r}")
    if loss_fn is not None or not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("torchbp.audit(reference='numpy') needs a (batch, features) input tensor, a target "
                         "tensor and the default loss (the derivation's ½‖y − h‖², mean over the batch)")
    from .. import reference as np_ref
    weights, biases, acts = np_ref.from_torch(model)
    x64, y64 = x.detach().double().cpu(), y.detach().double().cpu()
    out = np_ref.backprop(weights, biases, acts, x64.numpy(), y64.numpy())
    linears = [n for n, m in model.named_children() if isinstance(m, torch.nn.Linear)]
    model64 = converted_copy(model, torch.float64, torch.device("cpu"))
    keep = KeepGrads(set(linears))
    with routing(model64):
        _, sub_loss = losses_for(None, y64, 0, torch.float64)
        Pass(model64, x64, y64, sub_loss, keep, seed=0, device=torch.device("cpu"))
    rows = []
    for i, name in enumerate(linears):
        pairs = [("grad_output", out["deltas"][i]), ("weight", out["grad_W"][i]), ("bias", out["grad_b"][i])]
        for qty, want in pairs:
            got = keep.store.get((name, qty))
            if want is None or got is None:
                continue
            m = compare.metrics(got, torch.from_numpy(want))
            tol, status = compare.judge(m["rel_err"], torch.float64)
            rows.append(Row(layer=name, kind="Linear", quantity=f"{qty} (numpy)", shape=tuple(got.shape),
                            max_abs_err=m["max_abs_err"], rel_err=m["rel_err"], cosine=m["cosine"],
                            tolerance=tol, status=status, norm=m["norm"], ref_norm=m["ref_norm"],
                            sha256=digest(got)))
    return rows
