"""The checker: ``torchbp.audit`` compares δ layers with native autograd layer by layer.

capture.py (hooks), compare.py (metrics, comparison policy), report.py (AuditReport), runner.py (the
passes), options.py (the audit options, shared by the CLI and the pytest plugin).
"""
import importlib

# loaded on first use: the pytest plugin imports .options at pytest start-up, without torch
_FROM = {"AuditReport": "report", "Row": "report", "compare_reports": "report",
         "assert_gradients_match": "runner", "audit": "runner", "environment": "runner"}
__all__ = list(_FROM)


def __getattr__(name):
    if name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
