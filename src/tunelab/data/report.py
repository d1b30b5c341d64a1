"""The data report as a plain dict (`data_report.json`'s schema, documented in docs/data-report.md).

Built here, in the data package, so `tunelab data check` needs nothing from `tunelab.reports`;
`tunelab.reports.data_report` re-exports `build` and `headline` and writes the JSON and HTML files.
"""

from __future__ import annotations

from typing import Any

from tunelab import __version__
from tunelab.data.findings import Finding

SCHEMA_VERSION = 1


def build(findings: list[Finding], sizes: dict[str, int], sources: list[dict[str, Any]],
          forced: bool = False) -> dict[str, Any]:
    """The report as a plain dict; see docs/data-report.md for every field."""
    summary = {sev: sum(1 for f in findings if f.severity == sev) for sev in ("error", "warning", "info")}
    return {"schema_version": SCHEMA_VERSION, "generated_by": f"tunelab {__version__}", "sources": sources,
            "sizes": sizes, "summary": summary, "forced": forced,
            "findings": [f.to_dict() for f in findings]}


def headline(report: dict[str, Any]) -> str:
    """One line for consoles and model cards: examples per split and findings per severity."""
    sizes = ", ".join(f"{k} {v}" for k, v in report["sizes"].items())
    s = report["summary"]
    return f"{sizes}; {s['error']} error(s), {s['warning']} warning(s), {s['info']} note(s)"
