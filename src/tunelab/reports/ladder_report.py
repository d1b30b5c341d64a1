"""The ladder report of `tunelab auto`: the ladder table as Markdown (auto.md) and HTML with a bar chart
of each rung's validation metric (auto.html), from the auto.json record (tunelab.auto.ladder).

One function formats the table's cells (`ladder_rows`), so the console, the Markdown and the HTML show
the same numbers the same way.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from tunelab.run.files import write_text

COLUMNS = ("rung", "method", "validation", "gain", "seconds", "energy kWh", "CO2 kg", "status", "why")
TRIAL_COLUMNS = ("rung", "trial", "learning rate", "validation", "seconds", "status", "run directory")


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def ladder_rows(record: dict[str, Any]) -> list[list[str]]:
    """The ladder table's cells, one row a rung, in COLUMNS order (the validation column holds the ladder's
    metric; the winner's status is marked)."""
    rows = []
    for r in record["rungs"]:
        status = r["status"] + (" (winner)" if r["rung"] == record.get("winner") else "")
        rows.append([r["rung"], r["method"] or "–", _num(r["metric"], ".4f"), _num(r["gain"], "+.4f"),
                     _num(r["seconds"], ".1f"), _num(r["energy_kwh"], ".2e"), _num(r["co2_kg"], ".2e"), status,
                     r["why"]])
    return rows


def trial_rows(record: dict[str, Any]) -> list[list[str]]:
    """The learning-rate search inside the rungs: one row a trial, in TRIAL_COLUMNS order; the trial a rung kept
    is marked. Empty when no rung ran more than one trial."""
    rows = []
    for r in record["rungs"]:
        trials = r.get("trials") or []
        if len(trials) < 2:
            continue
        for t in trials:
            kept = " (kept)" if t["run_dir"] == r["run_dir"] else ""
            rows.append([r["rung"], t["name"], _num(t["learning_rate"], ".2e"), _num(t["metric"], ".4f"),
                         _num(t["seconds"], ".1f"), t["status"] + kept, t["run_dir"]])
    return rows


def ladder_markdown(record: dict[str, Any]) -> str:
    """auto.md: the verdict, the table and the rules that produced it."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"# tunelab auto: {record.get('name')}", "", record["verdict"], "",
             f"Validation metric: **{record['metric']}** ({'lower' if record['lower_is_better'] else 'higher'} is "
             f"better). Budget {record['budget_s']:.0f} s, used {record['elapsed_s']:.0f} s; a rung must gain at "
             f"least {record['min_gain']:g} over the best before it for the ladder to climb on.", "",
             line(list(COLUMNS)), line(["---"] * len(COLUMNS))]
    lines += [line(row) for row in ladder_rows(record)]
    trials = trial_rows(record)
    if trials:
        lines += ["", "## The learning-rate search inside the rungs", "", line(list(TRIAL_COLUMNS)),
                  line(["---"] * len(TRIAL_COLUMNS))] + [line(row) for row in trials]
    return "\n".join(lines) + "\n"


def _bar_chart(record: dict[str, Any]) -> str | None:
    """PNG (base64) of each measured rung's validation metric, the winner in green, zero-shot in grey."""
    measured = [r for r in record["rungs"] if r["metric"] is not None]
    if not measured:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["#2e7d32" if r["rung"] == record.get("winner") else "#9e9e9e" if i == 0 else "#1565c0"
               for i, r in enumerate(measured)]
    fig, ax = plt.subplots(figsize=(1.6 * len(measured) + 2, 3.2))
    bars = ax.bar([r["rung"] for r in measured], [r["metric"] for r in measured], color=colours)
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel(f"validation {record['metric']}")
    ax.set_title("the ladder")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ladder_html(record: dict[str, Any]) -> str:
    """auto.html: a self-contained page (the chart embedded as PNG)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    return env.get_template("ladder_report.html").render(record=record, columns=COLUMNS, rows=ladder_rows(record),
                                                         trial_columns=TRIAL_COLUMNS, trials=trial_rows(record),
                                                         chart=_bar_chart(record))


def write_ladder_report(folder: Path, record: dict[str, Any]) -> None:
    """Write auto.md and auto.html into FOLDER."""
    write_text(Path(folder) / "auto.md", ladder_markdown(record))
    write_text(Path(folder) / "auto.html", ladder_html(record))
