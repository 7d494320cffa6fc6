"""The old import path of the audit's kinds; they live in tasks/audit/report.py."""

from tasks.audit.report import DAMAGE, KINDS

__all__ = ["DAMAGE", "KINDS"]
