"""The `tunelab monitor` command, as a plain typer-compatible function (registered by tunelab.cli).

Exit codes (tunelab.run.exitcodes): OK 0 no alert; CHECK_FAILED 1 at least one alert fired (for cron / CI);
USER_ERROR 2 the run, the log or the feedback cannot be used (raised as RunError / DataError, which the main
CLI maps to 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.run.exitcodes import CHECK_FAILED

DB_HELP = ("Request log: a SQLAlchemy URL (sqlite:///path/requests.db, postgresql://user@host/db). "
           "Default: sqlite:///<RUN>/../requests.db, the log `tunelab serve` writes next to the run directories.")


def monitor(run: Path = typer.Argument(..., help="A finished run directory (its name is the model name in the log)."),
            db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
            since: Optional[str] = typer.Option(None, "--since", help="Only requests from then on: 24h, 7d, 30m, "
                                                "2026-11-27 or 2026-11-27T10:00 (local time unless a zone is given)."),
            feedback: Optional[Path] = typer.Option(None, "--feedback", help="CSV/JSONL of corrected labels (text, "
                                                    "label): also writes a retraining spec (retrain.yaml)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default RUN/monitoring/<time>/).")
            ) -> None:
    """Compare logged inference traffic with the run's training data; exit 1 when an alert fires."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tunelab.monitor.report import format_threshold, format_value, monitor_run

    report = monitor_run(run, db_url=db, since=since, feedback=feedback, out=out)
    console = Console(soft_wrap=True)
    req = report["requests"]
    window = f"since {report['since']}" if report["since"] else "all time"
    table = Table(title=f"{report['model']}: {req['total']} requests ({window}), {req['failed']} failed")
    for col in ("check", "value", "alert when", "status", "details"):
        table.add_column(col, justify="right" if col in ("value", "alert when") else "left")
    for c in report["checks"]:
        status = ("[bold red]ALERT[/]" if c["alert"] else "[dim]skipped[/]" if c["details"].get("skipped")
                  else "[green]ok[/]")
        table.add_row(c["name"], format_value(c), format_threshold(c), status, escape(c["details"]["summary"]))
    console.print(table)
    for note in report["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)
    if report.get("retrain"):
        r = report["retrain"]
        console.print(f"retraining spec: {r['spec']} ({r['rows_added']} corrected rows added to {r['original_rows']}; "
                      f"train with `tunelab train {r['spec']}`)", highlight=False)
        for note in r["notes"]:
            console.print(f"note: {escape(note)}", highlight=False)
    console.print(f"report: {report['files']['html']}", highlight=False)
    if report["alerts"]:
        console.print(f"[bold red]{len(report['alerts'])} alert(s):[/] "
                      + ", ".join(a["name"] for a in report["alerts"]), highlight=False)
        raise typer.Exit(CHECK_FAILED)
