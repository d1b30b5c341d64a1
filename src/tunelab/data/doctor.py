"""Data checks run before any compute is spent. One check is one registered function.

A check looks at the prepared splits and returns a Finding (or None). Errors stop training unless the
user forces it; warnings are reported. The registry is the extension point: a new check is one
function with `@register_check(...)` in a module of `tunelab.data.checks`. The types and the registry
live in `tunelab.data.findings` (re-exported here); this module runs what is registered.
"""

from __future__ import annotations

import tunelab.data.checks  # noqa: F401  (registers every check, in the order they run)
from tunelab.data.findings import (CHECKS, MAX_EXAMPLES, Check, DoctorContext, Finding, Severity, column,
                                   register_check)

__all__ = ["CHECKS", "MAX_EXAMPLES", "TEXT_ONLY_CHECKS", "Check", "DoctorContext", "Finding", "Severity", "column",
           "register_check", "run_checks"]


TEXT_ONLY_CHECKS = ("empty-text", "too-short", "mojibake", "control-characters", "exact-duplicate", "near-duplicate",
                    "leakage", "personal-data")
"""The checks that make sense for unlabelled text (LLM training data); label checks would only misfire."""


def run_checks(ctx: DoctorContext, only: tuple[str, ...] | None = None) -> list[Finding]:
    """Run every registered check (or only the named ones); findings ordered errors first."""
    findings: list[Finding] = []
    for name, (_, check) in CHECKS.items():
        if only is not None and name not in only:
            continue
        result = check(ctx)
        findings += result if isinstance(result, list) else ([result] if result is not None else [])
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])
