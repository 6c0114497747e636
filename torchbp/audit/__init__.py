"""The checker: ``torchbp.audit`` compares δ layers with native autograd layer by layer.

capture.py (hooks), compare.py (metrics, comparison policy), report.py (AuditReport), runner.py (the
passes), options.py (the audit options, shared by the CLI and the pytest plugin).
"""
from .report import AuditReport, Row, compare_reports
from .runner import assert_gradients_match, audit, environment

__all__ = ["audit", "assert_gradients_match", "AuditReport", "Row", "compare_reports", "environment"]
