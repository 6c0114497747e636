"""The checker behind ``torchbp.audit(model, inputs, target=None, **options) -> AuditReport``: it
compares δ layers with native autograd layer by layer.

Modules: runner.py (``audit()``, the orchestrator of the steps below), passes.py (one forward and
backward, the subject's routing, coverage), capture.py (per-layer hooks), judging.py (each gradient
against the reference or the float64 oracle, the rows), compare.py (metrics, the comparison policy),
localization.py (first_divergence), state.py (working copies, inputs, buffers, generators),
losses.py (the default losses), env.py (the environment block), report.py (AuditReport), options.py
(the audit options shared by the CLI and the pytest plugin; imports no torch).
"""
from .. import _lazy

# loaded on first use: the pytest plugin imports .options at pytest start-up, without torch
_FROM = {"AuditReport": "report", "Row": "report", "compare_reports": "report",
         "assert_gradients_match": "runner", "audit": "runner", "environment": "env"}
__all__ = list(_FROM)


__getattr__ = _lazy(__name__, _FROM)


def __dir__():
    return sorted(__all__)
