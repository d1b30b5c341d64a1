"""monitor_run: logged inference traffic vs the run's training data -> monitor.json, monitor.html, alerts.

Default output folder: RUN/monitoring/<UTC timestamp>/. Thresholds come from the run's spec (`monitor:`).
Drift checks (input, predictions, confidence) need at least monitor.min_requests observations and are
reported as skipped, with the reason, below that; the serving-health checks (error rate, p99 latency) run
on any number of requests, because a failing server is news at any traffic.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.run import RunDir
from tunelab.monitor import drift
from tunelab.monitor.log import default_db_url, input_texts, parse_since, predictions, read_requests

SCHEMA_VERSION = 1
INPUT_CHECKS = ("input_length", "oov_rate", "embedding_drift")
PREDICTION_CHECKS = ("label_shift", "confidence_drop")
THRESHOLD_OF = {"input_length": "length_shift", "oov_rate": "oov_increase", "embedding_drift": "embedding_p_value",
                "label_shift": "label_shift", "confidence_drop": "confidence_drop", "error_rate": "error_rate",
                "latency_p99_ms": "latency_p99_ms"}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _out_dir(run: Path, out: Path | None, created: float) -> Path:
    if out is not None:
        return Path(out)
    base = RunDir(run).monitoring / datetime.fromtimestamp(created, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    return folder


def _drift_capable(spec: Any) -> bool:
    """Whether the run's task has text inputs the drift checks can read (its task says so: DRIFT)."""
    from tunelab.tasks import base, get_task

    return base.DRIFT in get_task(spec.task).capabilities


def _labels_of(run: Path, spec: Any) -> list[str]:
    """The run's label names in id order, from the saved model's config (no model load)."""
    import json


    config = json.loads((RunDir(run).find_model() / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    if id2label:
        return [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    return list(spec.data.labels or [])


def _drift_checks(run: Path, spec: Any, texts: list[str], preds: list[tuple[str, float]], hash_only: int,
                  n_requests: int, permutations: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Input and prediction checks (classifiers), plus what the plots need."""
    limits = spec.monitor
    minimum = limits.min_requests
    thr = {name: getattr(limits, THRESHOLD_OF[name]) for name in (*INPUT_CHECKS, *PREDICTION_CHECKS)}
    plots: dict[str, Any] = {"logged_lengths": drift.text_lengths(texts)}
    if not _drift_capable(spec):
        reason = f"drift checks support text-classification runs; this run is {spec.task}"
        return [drift.skipped(n, thr[n], reason) for n in (*INPUT_CHECKS, *PREDICTION_CHECKS)], plots
    if n_requests < minimum:
        reason = (f"{n_requests} request(s) logged, fewer than monitor.min_requests ({minimum}); too few to tell "
                  "drift from chance")
        return [drift.skipped(n, thr[n], reason) for n in (*INPUT_CHECKS, *PREDICTION_CHECKS)], plots
    input_reason = pred_reason = None
    if len(texts) < minimum:
        if hash_only and not texts:
            input_reason = "inputs were not logged (the server ran with --no-log-inputs; only hashes are stored)"
        elif hash_only:
            input_reason = (f"only {len(texts)} logged input text(s) ({hash_only} request(s) logged a hash only), "
                            f"fewer than monitor.min_requests ({minimum})")
        else:
            input_reason = f"only {len(texts)} logged input text(s), fewer than monitor.min_requests ({minimum})"
    if len(preds) < minimum:
        pred_reason = f"only {len(preds)} logged prediction(s), fewer than monitor.min_requests ({minimum})"
    if input_reason and pred_reason:  # nothing to compare: do not load the model or rebuild the data
        return ([drift.skipped(n, thr[n], input_reason) for n in INPUT_CHECKS]
                + [drift.skipped(n, thr[n], pred_reason) for n in PREDICTION_CHECKS]), plots
    from tunelab.monitor.reference import load_classifier, reference_for

    classifier = load_classifier(run, spec)
    ref = reference_for(run, spec, classifier, seed=seed)
    plots.update(train_lengths=ref.train_lengths, reference_labels=drift.distribution(ref.val_predicted, ref.labels),
                 true_labels=ref.val_true, reference_scores=ref.val_scores)
    plots["reference"] = {"sizes": ref.sizes, "embedding_source": ref.embedding_source, "cached": ref.cached,
                          "validation_mean_top_score": float(ref.val_scores.mean()) if len(ref.val_scores) else None}
    checks: list[dict[str, Any]] = []
    if input_reason:
        checks += [drift.skipped(n, thr[n], input_reason) for n in INPUT_CHECKS]
    else:
        _, embeddings = classifier.score_and_embed(texts, spec.training.eval_batch_size)
        checks.append(drift.length_check(ref.train_lengths, plots["logged_lengths"], thr["input_length"]))
        checks.append(drift.oov_check(ref.heldout_oov, texts, ref.vocab, thr["oov_rate"], ref.heldout_unk,
                                      drift.unk_rate(texts, classifier.tokenizer)))
        checks.append(drift.embedding_check(ref.embeddings, embeddings, thr["embedding_drift"], permutations, seed,
                                            ref.embedding_source))
        if hash_only:
            for check in checks[-3:]:
                check["details"]["hash_only_requests"] = hash_only
                check["details"]["summary"] += f"; {hash_only} request(s) without logged input not included"
    if pred_reason:
        checks += [drift.skipped(n, thr[n], pred_reason) for n in PREDICTION_CHECKS]
    else:
        labels, scores = [p[0] for p in preds], [p[1] for p in preds]
        checks.append(drift.label_check(ref.val_predicted, labels, thr["label_shift"], ref.labels,
                                        "the model's predictions on validation", ref.val_true))
        checks.append(drift.confidence_check(ref.val_scores, scores, thr["confidence_drop"]))
        plots.update(logged_labels=drift.distribution(labels, ref.labels), logged_scores=np.asarray(scores))
    return checks, plots


def monitor_run(run: str | Path, db_url: str | None = None, since: str | float | None = None,
                feedback: str | Path | None = None, out: str | Path | None = None, *,
                permutations: int = 500, seed: int = 0) -> dict[str, Any]:
    """Compare RUN's logged requests (from DB_URL, default sqlite:///<run>/../requests.db) with its training
    data; write monitor.json and monitor.html to OUT (default RUN/monitoring/<timestamp>/) and return the report.

    SINCE: '24h', '7d', an ISO date/time, or epoch seconds. FEEDBACK: a CSV/JSONL of corrected labels (text,
    label): also writes retrain_data.<ext> and retrain.yaml there. `report["alerts"]` lists the checks that fired.
    """
    from tunelab import __version__
    from tunelab.run.files import write_json
    from tunelab.monitor.log import _describe
    from tunelab.run import RunError, load_run_spec

    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: no such run directory")
    spec = load_run_spec(run)
    name = run.resolve().name
    since_ts = parse_since(since)
    labels: list[str] = []
    if feedback is not None:  # fail fast, before any scoring, on a feedback file that cannot be used
        from tunelab.data import DataError
        from tunelab.monitor.feedback import read_feedback

        if not _drift_capable(spec):
            raise DataError(f"--feedback needs a text-classification run; {run} is {spec.task}")
        labels = _labels_of(run, spec)
        read_feedback(Path(feedback), spec, labels)
    url = db_url or default_db_url(run)
    rows = read_requests(url, model=name, since=since_ts)
    created = time.time()
    folder = _out_dir(run, Path(out) if out else None, created)

    failed = [drift.is_failure(r["status"], r["error"]) for r in rows]
    ok = [r for r, f in zip(rows, failed) if not f]
    texts = [t for r in ok for t in input_texts(r["input"])]
    hash_only = sum(1 for r in ok if r["input"] is None)
    preds = [p for r in ok for p in predictions(r)]
    limits = spec.monitor

    checks, plot_data = _drift_checks(run, spec, texts, preds, hash_only, len(rows), permutations, seed)
    checks.append(drift.error_rate_check([r["status"] for r in rows], [r["error"] for r in rows], limits.error_rate))
    checks.append(drift.latency_check([r["latency_ms"] for r in rows], limits.latency_p99_ms))

    notes: list[str] = []
    if not rows:
        notes.append(f"no requests logged for model '{name}'" + (f" since {_iso(since_ts)}" if since_ts else "")
                     + f" in {_describe(url)}")
    elif len(rows) < limits.min_requests:
        notes.append(f"{len(rows)} request(s), fewer than monitor.min_requests ({limits.min_requests}): drift checks "
                     "were not run (no drift alerts); error rate and latency were checked")
    if hash_only:
        notes.append(f"{hash_only} successful request(s) logged only an input hash (--no-log-inputs); input drift "
                     "checks use the requests that logged their text")
    alerts = [{"name": c["name"], "value": c["value"], "threshold": c["threshold"], "summary": c["details"]["summary"]}
              for c in checks if c["alert"]]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "generated_by": f"tunelab {__version__} monitor",
        "run": str(run.resolve()), "model": name, "task": spec.task, "created": _iso(created),
        "db": _describe(url), "since": _iso(since_ts),
        "window": {"first": _iso(rows[0]["ts"]) if rows else None, "last": _iso(rows[-1]["ts"]) if rows else None},
        "requests": {"total": len(rows), "succeeded": len(ok), "failed": sum(failed), "with_inputs": len(ok) - hash_only,
                     "hash_only": hash_only, "texts": len(texts), "predictions": len(preds),
                     "by_route": dict(Counter(str(r.get("route")) for r in rows))},
        "thresholds": limits.model_dump(), "reference": plot_data.get("reference"),
        "status": "alert" if alerts else "ok", "alerts": alerts, "checks": checks, "notes": notes, "retrain": None,
        "files": {"folder": str(folder), "json": str(folder / "monitor.json"), "html": str(folder / "monitor.html")},
    }
    folder.mkdir(parents=True, exist_ok=True)
    if feedback is not None:
        from tunelab.monitor.feedback import write_retrain_spec

        report["retrain"] = write_retrain_spec(run, spec, Path(feedback), folder, labels)
        report["files"]["retrain_spec"] = report["retrain"]["spec"]
    write_json(folder / "monitor.json", report)
    write_html(folder / "monitor.html", report, plot_data, rows)
    return report


# -- HTML -------------------------------------------------------------------------------------------------
def _length_plot(train: np.ndarray | None, logged: np.ndarray) -> str | None:
    from tunelab.reports.html import _png, plt

    if not len(logged) and (train is None or not len(train)):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    pooled = np.concatenate([a for a in (train, logged) if a is not None and len(a)])
    bins = np.histogram_bin_edges(pooled, bins=min(40, max(5, len(np.unique(pooled)))))
    if train is not None and len(train):
        ax.hist(train, bins=bins, density=True, alpha=0.55, label=f"training ({len(train)})", color="#4c72b0")
    if len(logged):
        ax.hist(logged, bins=bins, density=True, alpha=0.55, label=f"logged ({len(logged)})", color="#dd8452")
    ax.set_xlabel("length (words)")
    ax.set_ylabel("density")
    ax.legend()
    return _png(fig)


def _label_plot(reference: dict[str, float] | None, true: dict[str, float] | None,
                logged: dict[str, float] | None) -> str | None:
    from tunelab.reports.html import _png, plt

    series = [(n, d) for n, d in (("validation, predicted", reference), ("validation, true", true),
                                   ("logged, predicted", logged)) if d]
    if not series:
        return None
    labels = list(dict.fromkeys(k for _, d in series for k in d))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 3.4))
    width = 0.8 / len(series)
    for i, (name, dist) in enumerate(series):
        ax.bar(np.arange(len(labels)) + i * width - 0.4 + width / 2, [dist.get(k, 0.0) for k in labels], width,
               label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("share")
    ax.legend()
    return _png(fig)


def _confidence_plot(reference: np.ndarray | None, logged: np.ndarray | None) -> str | None:
    from tunelab.reports.html import _png, plt

    if (reference is None or not len(reference)) and (logged is None or not len(logged)):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 21)
    if reference is not None and len(reference):
        ax.hist(reference, bins=bins, density=True, alpha=0.55, label=f"validation ({len(reference)})", color="#4c72b0")
    if logged is not None and len(logged):
        ax.hist(logged, bins=bins, density=True, alpha=0.55, label=f"logged ({len(logged)})", color="#dd8452")
    ax.set_xlabel("top score")
    ax.set_ylabel("density")
    ax.legend()
    return _png(fig)


def _latency_plot(rows: list[dict[str, Any]], threshold: float) -> str | None:
    from tunelab.reports.html import _png, plt

    points = [(datetime.fromtimestamp(r["ts"]), r["latency_ms"], drift.is_failure(r["status"], r["error"]))
              for r in rows if r.get("latency_ms") is not None and r.get("ts") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2))
    good = [(t, v) for t, v, f in points if not f]
    bad = [(t, v) for t, v, f in points if f]
    if good:
        ax.plot(*zip(*good), ".", ms=4, color="#4c72b0", label="succeeded")
    if bad:
        ax.plot(*zip(*bad), "x", ms=5, color="#c44e52", label="failed")
    ax.axhline(threshold, color="#c44e52", lw=1, ls="--", label=f"p99 threshold ({threshold:.0f} ms)")
    p99 = float(np.percentile([v for _, v, _ in points], 99))
    ax.axhline(p99, color="#555", lw=1, ls=":", label=f"p99 ({p99:.0f} ms)")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("time (local)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.autofmt_xdate()
    return _png(fig)


def write_html(path: Path, report: dict[str, Any], plot_data: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """monitor.html: one self-contained file, plots embedded as PNG."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from tunelab.run.files import write_text

    plots = {
        "lengths": _length_plot(plot_data.get("train_lengths"), plot_data.get("logged_lengths", np.zeros(0))),
        "labels": _label_plot(plot_data.get("reference_labels"), plot_data.get("true_labels"),
                              plot_data.get("logged_labels")),
        "confidence": _confidence_plot(plot_data.get("reference_scores"), plot_data.get("logged_scores")),
        "latency": _latency_plot(rows, report["thresholds"]["latency_p99_ms"]),
    }
    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    write_text(path, env.get_template("monitor_report.html").render(
        report=report, plots=plots, fmt=format_value, fmt_threshold=format_threshold))


def format_value(check: dict[str, Any]) -> str:
    """A check's value for tables: shares as %, p-values as numbers, latency in ms."""
    value = check["value"]
    if value is None:
        return "–"
    if check["name"] in ("input_length", "oov_rate", "error_rate"):
        return f"{value:+.1%}" if check["name"] == "oov_rate" else f"{value:.1%}"
    if check["name"] == "latency_p99_ms":
        return f"{value:.0f} ms"
    if check["name"] == "embedding_drift":
        return f"p={value:.3g}"
    return f"{value:.3f}"


def format_threshold(check: dict[str, Any]) -> str:
    t = check["threshold"]
    return {"input_length": f"> {t:.0%}", "oov_rate": f"> +{t:.1%}", "error_rate": f"> {t:.1%}",
            "latency_p99_ms": f"> {t:.0f} ms", "embedding_drift": f"p < {t:g}"}.get(check["name"], f"> {t:g}")
