"""The checker: ``torchbp.audit(model, inputs, target=None, **options) -> AuditReport`` compares δ layers
with native autograd layer by layer (the options: ``torchbp.audit.audit``'s docstring).

``torchbp.audit`` is this package, and calling it runs the audit, so both ``torchbp.audit(model, x)`` and
``import torchbp.audit.compare`` work. capture.py (hooks), compare.py (metrics, comparison policy),
report.py (AuditReport), runner.py (the passes), options.py (the audit options, shared by the CLI and
the pytest plugin).
"""
import sys
import types

from .. import _lazy

# loaded on first use: the pytest plugin imports .options at pytest start-up, without torch
_FROM = {"AuditReport": "report", "Row": "report", "compare_reports": "report",
         "assert_gradients_match": "runner", "audit": "runner", "environment": "runner"}
__all__ = list(_FROM)


__getattr__ = _lazy(__name__, _FROM)


def __dir__():
    return sorted(__all__)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .runner import audit
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
