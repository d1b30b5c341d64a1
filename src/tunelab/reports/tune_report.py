"""The report of a `tunelab tune` study: tune.json (the trial table, the best trial, the winner's test score,
energy) and tune.html (the table and three plots: optimisation history, per-epoch validation curves with the
pruned trials marked, and parameter importances), in the study folder.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from tunelab.auto.energy import total
from tunelab.reports.html import _png, plt
from tunelab.run.files import write_json, write_text

TUNE_JSON, TUNE_HTML = "tune.json", "tune.html"


def trial_row(trial: Any) -> dict[str, Any]:
    """One row of the trial table from an Optuna FrozenTrial and the user attributes `tune` set on it."""
    energy = trial.user_attrs.get("energy") or {}
    return {"number": trial.number, "state": trial.state.name, "params": trial.params,
            "validation": trial.value if trial.value is not None else _last(trial.intermediate_values),
            "epochs": trial.user_attrs.get("epochs", len(trial.intermediate_values)),
            "seconds": trial.user_attrs.get("seconds"), "energy_kwh": energy.get("energy_kwh"),
            "co2_kg": energy.get("co2_kg"), "energy_method": energy.get("method"),
            "status": trial.user_attrs.get("status", trial.state.name.lower()),
            "run_dir": trial.user_attrs.get("run_dir"), "worker": trial.user_attrs.get("worker"),
            "retry_of": trial.system_attrs.get("failed_trial")}


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def importances(study: Any) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances (fANOVA) over the completed trials, or why there are none."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"parameter importances need at least 2 completed trials; this study has {len(done)}"
    try:
        return optuna.importance.get_param_importances(study), ""
    except (RuntimeError, ValueError) as err:  # e.g. every completed trial drew the same values
        return {}, f"parameter importances not available: {err}"


def build_report(study: Any, spec: Any, space: dict[str, str], requested: int, storage: str,
                 winner: Any | None, test: dict[str, Any] | None) -> dict[str, Any]:
    """What tune.json holds."""
    from sqlalchemy.engine import make_url

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    counted = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    weights, note = importances(study)
    energy = total(t.user_attrs.get("energy") for t in study.get_trials(deepcopy=False)) or {}
    return {
        "study": study.study_name, "storage": make_url(storage).render_as_string(hide_password=True),
        "metric": spec.evaluation.metric, "direction": "lower is better" if spec.lower_is_better else "higher is better",
        "trials_requested": requested, "finished": len(counted),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "space": space, "trials": rows,
        "best_trial": trial_row(winner) if winner else None,
        "winner": None if winner is None else {
            "trial": winner.number, "run_dir": winner.user_attrs.get("run_dir"), "validation": winner.value,
            "promoted": winner.user_attrs.get("status") == "completed", "spec": "winner.yaml",
            "test": {kind: splits.get("test") for kind, splits in test.items() if isinstance(splits, dict)}
            if test else None},
        "importances": weights, "importances_note": note,
        "energy": {"energy_kwh": energy.get("energy_kwh", 0.0), "co2_kg": energy.get("co2_kg", 0.0),
                   "method": energy.get("method"), "trials_counted": energy.get("records", 0),
                   "note": "sum over the trials' records (run.json 'energy'); test scoring of the winner not counted"},
    }


def history_plot(study: Any, report: dict[str, Any]) -> str | None:
    """Each trial's validation metric by trial number (pruned: their last epoch), and the best so far."""
    rows = [r for r in report["trials"] if r["validation"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
    if not rows:
        return None
    lower = report["direction"].startswith("lower")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for state, marker, colour in (("COMPLETE", "o", "#1f77b4"), ("PRUNED", "x", "#d62728")):
        pts = [(r["number"], r["validation"]) for r in rows if r["state"] == state]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=colour, label=state.lower())
    best, line = math.inf if lower else -math.inf, []
    for r in sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["number"]):
        best = min(best, r["validation"]) if lower else max(best, r["validation"])
        line.append((r["number"], best))
    if line:
        ax.step(*zip(*line), where="post", color="#2ca02c", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {report['metric']}")
    ax.legend()
    return _png(fig)


def curves_plot(study: Any, report: dict[str, Any]) -> str | None:
    """Per-epoch validation metric of every trial, as the pruner saw it (pruned trials dashed)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for t in trials:
        steps = sorted(t.intermediate_values)
        pruned = t.state.name == "PRUNED"
        ax.plot(steps, [t.intermediate_values[s] for s in steps], "--" if pruned else "-", marker="o", ms=3,
                alpha=0.8, label=f"{t.number}{' (pruned)' if pruned else ''}")
    ax.set_xlabel(study.user_attrs.get("step", "epoch"))  # percent of each trial's schedule when epochs are searched
    ax.set_ylabel(f"validation {report['metric']}")
    if len(trials) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def importance_plot(report: dict[str, Any]) -> str | None:
    weights = report["importances"]
    if not weights:
        return None
    names = list(weights)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(names) + 1.2))
    ax.barh(names, [weights[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA, share of the metric's variance)")
    return _png(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def render_html(report: dict[str, Any], plots: dict[str, str | None]) -> str:
    """A self-contained page: summary, winner, trial table, plots (embedded PNG)."""
    e = html.escape
    w = report["winner"]
    head = ["#", "state", "status", f"validation {report['metric']}", "epochs", "seconds", "kWh", "CO2 kg", "params"]
    cells = "".join(
        "<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in (r["number"], r["state"], r["status"], r["validation"],
                                                             r["epochs"], r["seconds"], r["energy_kwh"], r["co2_kg"],
                                                             r["params"])) + "</tr>" for r in report["trials"])
    winner = "<p>No trial completed, so there is no winner.</p>"
    if w is not None:
        verdict = "promoted" if w["promoted"] else "<b>not promoted</b> (does not beat the untuned baseline)"
        winner = (f"<p>Winner: trial {w['trial']} ({e(str(w['run_dir']))}), validation {e(report['metric'])} "
                  f"{_fmt(w['validation'])}, {verdict}; test, scored once: {e(_fmt(w['test']))}. "
                  f"Its spec: {e(w['spec'])} (<code>tunelab train {e(w['spec'])}</code>).</p>")
    figures = "".join(f'<h2>{e(title)}</h2><img id="{key}" alt="{e(title)}" src="data:image/png;base64,{png}">'
                      for key, title, png in (("history", "Optimisation history", plots.get("history")),
                                              ("curves", "Validation metric per epoch", plots.get("curves")),
                                              ("importances", "Parameter importances", plots.get("importances")))
                      if png)
    note = f"<p>{e(report['importances_note'])}</p>" if report["importances_note"] else ""
    energy = report["energy"]
    space = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in report["space"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tune {e(report['study'])}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;font-size:13px}</style></head><body>"
            f"<h1>Hyperparameter search: {e(report['study'])}</h1>"
            f"<p>{report['finished']} of {report['trials_requested']} trials finished (completed + pruned); "
            f"states {e(_fmt(report['states']))}; metric validation {e(report['metric'])} "
            f"({e(report['direction'])}); storage {e(report['storage'])}.</p>{winner}"
            f"<p>Energy, all trials: {energy['energy_kwh']:.6f} kWh, {energy['co2_kg']:.6f} kg CO2e "
            f"({e(energy['note'])}).</p><h2>Search space</h2><ul>{space}</ul>"
            f"<h2>Trials</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr>{cells}</table>"
            f"{figures}{note}</body></html>")


def write_report(folder: Path, report: dict[str, Any], study: Any) -> None:
    """tune.json and tune.html into FOLDER."""
    write_json(folder / TUNE_JSON, report)
    plots = {"history": history_plot(study, report), "curves": curves_plot(study, report),
             "importances": importance_plot(report)}
    write_text(folder / TUNE_HTML, render_html(report, plots))
