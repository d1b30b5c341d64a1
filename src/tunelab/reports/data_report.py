"""The data report: `data_report.json` (stable schema, documented in docs/data-report.md) and an HTML view.

Written by every training run and by `tunelab data check`, so the evidence about the data travels with
the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.artifacts import write_json, write_text
from tunelab.data.doctor import Finding

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


def _histogram_png(details: dict[str, Any]) -> str | None:
    hist = details.get("histogram")
    if not hist or "edges" not in hist or "counts" not in hist:
        return None
    from tunelab.reports.html import _png, plt

    fig, ax = plt.subplots(figsize=(7, 3))
    edges, counts = hist["edges"], hist["counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="#4a7ebb")
    if details.get("max_length"):
        ax.axvline(details["max_length"], color="#c00", ls="--", label=f"max_length {details['max_length']}")
        ax.legend()
    ax.set_xlabel("tokens per text")
    ax.set_ylabel("texts")
    return _png(fig)


def write(report: dict[str, Any], folder: Path) -> None:
    """Write data_report.json and data_report.html into FOLDER."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    write_json(folder / "data_report.json", report)
    plots = {f["check"]: png for f in report["findings"] if (png := _histogram_png(f.get("details", {})))}
    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    html = env.get_template("data_report.html").render(report=report, plots=plots, headline=headline(report))
    write_text(folder / "data_report.html", html)
