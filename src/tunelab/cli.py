"""The `tunelab` command: one verb per lifecycle step. Thin: parse, call the library, print."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pre-trained models for your task, with evidence that they beat the base.")
err = Console(stderr=True, soft_wrap=True)
out = Console()


def _user_errors() -> tuple[type[BaseException], ...]:
    from tunelab.catalog import ModelNotFound
    from tunelab.data import DataError
    from tunelab.recipe import RunError
    from tunelab.spec import SpecError

    return SpecError, DataError, RunError, ModelNotFound


def _summary_table(metrics: dict, metric_names: tuple[str, ...] = ("accuracy", "macro_f1")) -> Table:
    table = Table(title="baseline vs fine-tuned (same examples)")
    for col in ("split", "n", "metric", "baseline", "fine-tuned", "gain"):
        table.add_column(col, justify="left" if col in ("split", "metric") else "right")
    for split, ft in metrics["fine_tuned"].items():
        base = metrics.get("baseline", {}).get(split, {})
        for m in metric_names:
            gain = f"{ft[m] - base[m]:+.4f}" if m in base else "–"
            style = "green" if m in base and ft[m] > base[m] else ("red" if m in base else "")
            table.add_row(split, str(ft["n"]), m, f"{base[m]:.4f}" if m in base else "–", f"{ft[m]:.4f}",
                          f"[{style}]{gain}[/]" if style else gain)
    return table


@app.command()
def train(spec: Path = typer.Argument(..., help="Run spec (YAML)."),
          name: Optional[str] = typer.Option(None, help="Run name; overrides the spec's."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
          force: bool = typer.Option(False, "--force", help="Train despite data errors (recorded in the report).")) -> None:
    """Fine-tune the base model on the spec's data; write runs/<name>/."""
    from tunelab.recipe import fine_tune
    from tunelab.spec import load_spec

    run_spec = load_spec(spec)
    if name:
        run_spec.name = name
    run = fine_tune(run_spec, resume=resume, force=force, overwrite=overwrite)
    if not run.metrics:  # not the main process
        return
    out.print(_summary_table(run.metrics))
    if run.comparison:
        c = run.comparison
        verdict = "[green]better than[/]" if c["better"] else "[red]NOT better than[/]"
        out.print(f"test {c['metric']}: baseline {c['baseline']:.4f} -> fine-tuned {c['fine_tuned']:.4f} "
                  f"({verdict} the untuned base, n={c['n']})")
    out.print(f"run directory: {run.dir}  (report: {run.dir / 'report.html'})")


@app.command()
def evaluate(run: Path = typer.Argument(..., help="Run directory."),
             data: Optional[str] = typer.Option(None, help="Score this file instead of the run's validation/test splits."),
             baseline: bool = typer.Option(True, help="Also score the untuned base model on the same examples.")) -> None:
    """Score a finished run on its held-out splits, or on new data, beside the untuned baseline."""
    from tunelab.evaluate_run import evaluate_run

    metrics = evaluate_run(run, data, baseline)
    out.print(_summary_table(metrics))
    out.print_json(json.dumps(metrics))


@app.command()
def predict(run: Path = typer.Argument(..., help="Run directory (or a model folder)."),
            text: Optional[list[str]] = typer.Option(None, "--text", help="A text to classify; repeatable."),
            file: Optional[Path] = typer.Option(None, "--file", help="A .txt (one text per line), CSV, TSV, JSONL or Parquet file."),
            text_column: str = typer.Option("text", help="Text column of --file tables."),
            top_k: int = typer.Option(3, help="Scores to list per text.")) -> None:
    """Predict labels; prints one JSON object per text (JSON lines)."""
    from tunelab.evaluate_run import predict_texts, read_texts

    if bool(text) == bool(file):
        raise typer.BadParameter("give either --text (one or more) or --file")
    texts = list(text) if text else read_texts(file, text_column)
    for row in predict_texts(run, texts, top_k):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@app.command()
def init(task: str = typer.Argument("text-classification", help="Task to write a spec for."),
         output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout.")) -> None:
    """Write a commented spec for TASK, generated from the schema."""
    from tunelab.spec import template

    text = template(task)
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists():
        raise typer.BadParameter(f"{output} exists; choose another path")
    output.write_text(text, encoding="utf-8")
    err.print(f"wrote {output}")


@app.command()
def models() -> None:
    """List the bundled base models and data sets (usable without a model hub)."""
    from tunelab.catalog import bundled_summary
    from tunelab.data.sources import describe_bundled

    out.print("Bundled models:\n" + bundled_summary())
    out.print("Bundled data sets:\n" + describe_bundled())


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' load reports ("classifier.weight MISSING") are expected when a new head is attached;
    # keep them out of the user's way unless asked for with TRANSFORMERS_VERBOSITY=info.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()
    except _user_errors() as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
