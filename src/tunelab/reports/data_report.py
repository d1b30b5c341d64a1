"""The data report: `data_report.json` (stable schema, documented in docs/data-report.md) and an HTML view.

Written by every training run and by `tunelab data check`, so the evidence about the data travels with
the model. The dict itself is built in `tunelab.data.report` (data never imports reports); `build` and
`headline` are re-exported here for the recipes and the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.report import SCHEMA_VERSION, build, headline
from tunelab.run import RunDir
from tunelab.run.files import write_json, write_text

__all__ = ["SCHEMA_VERSION", "build", "headline", "write"]


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

    write_json(folder / RunDir.DATA_REPORT_JSON, report)
    plots = {f["check"]: png for f in report["findings"] if (png := _histogram_png(f.get("details", {})))}
    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    html = env.get_template("data_report.html").render(report=report, plots=plots, headline=headline(report))
    write_text(folder / RunDir.DATA_REPORT, html)
