"""The `tunelab tune` command, as a plain typer-compatible function (registered by tunelab.cli).

Exit codes (tunelab.run.exitcodes): OK 0 the winner beats its baseline; NOT_PROMOTED 3 no trial beat the
baseline or none completed; USER_ERROR 2 a bad spec, search section or storage (the main CLI maps user errors to 2).
Heavy imports (optuna, torch) happen inside the command, so `tunelab --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tunelab.run.exitcodes import NOT_PROMOTED

STORAGE_HELP = ("Optuna storage: any SQLAlchemy URL (sqlite:///path/tunelab.db, postgresql+psycopg://user@host/db). "
                "Default: sqlite:///<output.dir>/tunelab.db, the project database beside the run directories.")


def tune(spec: Path = typer.Argument(..., help="Run spec (YAML); its search: section shapes the search."),
         trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Trials to finish (completed + pruned); "
                                              "default search.trials (20). A re-run continues up to this many."),
         timeout: Optional[str] = typer.Option(None, "--timeout", help="Start no trial after this long: seconds or "
                                               "30m, 2h. Default search.timeout (none)."),
         workers: int = typer.Option(1, "--workers", min=1, help="Worker processes on the one study."),
         storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
         study: Optional[str] = typer.Option(None, "--study", help="Study name, and its folder <output.dir>/<study>; "
                                             "default the spec's run name."),
         name: Optional[str] = typer.Option(None, help="Run name; overrides the spec's (the study folder is "
                                            "<output.dir>/<name>)."),
         trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Load the base model even where its "
                                           "weights are pickle files, which can run code (as `tunelab train "
                                           "--trust-pickle`; every trial's run.json records it).")) -> None:
    """Search learning rate, epochs, batch size, warmup, weight decay (and LoRA r/alpha/dropout) with Optuna;
    each trial is a run under <output.dir>/<name>/trials/, the winner is scored on test once."""
    from rich.console import Console
    from rich.markup import escape

    from tunelab.spec import load_spec
    from tunelab.spec.schema import duration_seconds

    run_spec = load_spec(spec)  # light: a typo in the spec or its search section fails before torch loads
    if name:
        run_spec.name = name
    if trust_pickle:
        run_spec.model.trust_pickle = True
    seconds = duration_seconds(timeout, "--timeout")
    console = Console(soft_wrap=True)
    if run_spec.model.trust_pickle:
        Console(stderr=True, soft_wrap=True).print("[bold yellow]warning:[/] model.trust_pickle is on: the base model may be loaded from pickle "
                      "weights, which can run code; recorded in each trial's run.json", highlight=False)
    from tunelab.auto.search_space import describe, resolve_space
    from tunelab.auto.tune import tune as run_tune

    for param, rng in describe(resolve_space(run_spec)).items():
        console.print(f"search {param}: {escape(rng)}", highlight=False)
    result = run_tune(run_spec, trials, seconds, workers, storage, study, progress=_progress(console))
    console.print(_table(result.report))
    _print_outcome(console, result)
    if not result.promoted:  # no trial completed, or the best one does not beat the untuned baseline
        raise typer.Exit(NOT_PROMOTED)


def _progress(console: Any) -> Any:
    """A callback for Optuna: one line per finished trial."""
    from rich.markup import escape

    colours = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}

    def show(study: Any, trial: Any) -> None:
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        shown = "–" if value is None else f"{value:.4f}"
        best = ""
        if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            best = f"  best so far: trial {study.best_trial.number} ({study.best_value:.4f})"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        state = trial.state.name
        console.print(f"trial {trial.number} [{colours.get(state, 'white')}]{state.lower()}[/] validation "
                      f"{study.user_attrs.get('metric', '')} {shown} after {len(trial.intermediate_values)} "
                      f"epoch(s){best}  [dim]{escape(params)}[/]", highlight=False)

    return show


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"study {report['study']}: {report['finished']} of {report['trials_requested']} trials "
                  f"finished; validation {report['metric']} ({report['direction']})")
    for col in ("#", "state", "validation", "epochs", "seconds", "kWh", "CO2 kg", "params"):
        table.add_column(col, justify="left" if col in ("state", "params") else "right")
    best = (report.get("best_trial") or {}).get("number")
    for r in report["trials"]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        table.add_row(f"{r['number']}{' *' if r['number'] == best else ''}", r["state"].lower(), _num(r["validation"]),
                      str(r["epochs"]), _num(r["seconds"], ".1f"), _num(r["energy_kwh"], ".6f"),
                      _num(r["co2_kg"], ".6f"), params)
    return table


def _num(value: Any, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _print_outcome(console: Any, result: Any) -> None:
    from rich.markup import escape

    report = result.report
    energy = report["energy"]
    console.print(f"energy, all trials: {energy['energy_kwh']:.6f} kWh, {energy['co2_kg']:.6f} kg CO2e", highlight=False)
    if report["importances_note"]:
        console.print(f"note: {escape(report['importances_note'])}", highlight=False)
    winner = report["winner"]
    if winner is None:
        console.print("[red]no trial completed[/]: every trial was pruned or failed; widen search.space or give "
                      "more trials", highlight=False)
    else:
        test = winner["test"] or {}
        tuned, base = (test.get("fine_tuned") or {}), (test.get("baseline") or {})
        metric = report["metric"]
        shown = f"{tuned[metric]:.4f}" if metric in tuned else escape(str(tuned))
        vs = f" (untuned baseline {base[metric]:.4f})" if metric in base else ""
        console.print(f"winner: trial {winner['trial']}, validation {metric} {winner['validation']:.4f}; test, scored "
                      f"once on the winner only: {metric} {shown}{vs}", highlight=False)
        console.print(f"winner's run: {escape(str(winner['run_dir']))}; its spec: "
                      f"{escape(str(result.dir / 'winner.yaml'))} (tunelab train accepts it)", highlight=False)
        if not winner["promoted"]:
            console.print("[bold red]no trial beat the untuned baseline[/] on validation: the winner is not promoted "
                          "(see its report for why); try more trials, more epochs or a wider learning-rate range",
                          highlight=False)
    console.print(f"report: {escape(str(result.dir / 'tune.html'))}", highlight=False)
