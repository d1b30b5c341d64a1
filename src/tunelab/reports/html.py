"""The run report: one self-contained HTML file (plots embedded as PNG) a reviewer can open offline.

matplotlib draws the plots (Agg backend, no display needed); jinja2 fills the template.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from tunelab.auto.defaults import summary as defaults_summary  # noqa: E402
from tunelab.auto.energy import summary  # noqa: E402


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def learning_curves(history: list[dict[str, Any]], step_losses: list[list[float]], metric: str) -> str | None:
    """Loss (per step and per epoch, train and validation) and the task metric per epoch."""
    if not history:
        return None
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 3.8))
    if step_losses:
        steps, losses = zip(*step_losses)
        ax_loss.plot(steps, losses, color="#bbb", lw=0.8, label="train loss (step)")
    epochs = [h["epoch"] for h in history]
    steps_at_epoch = _epoch_steps(history, step_losses)
    ax_loss.plot(steps_at_epoch, [h["train_loss"] for h in history], "o-", label="train loss (epoch mean)")
    ax_loss.plot(steps_at_epoch, [h["val_loss"] for h in history], "s-", label="validation loss")
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [h.get(f"train_{metric}") for h in history], "o-", label=f"train {metric}")
    ax_metric.plot(epochs, [h.get(f"val_{metric}") for h in history], "s-", label=f"validation {metric}")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.set_ylim(0, 1.02)
    ax_metric.legend()
    return _png(fig)


def _epoch_steps(history: list[dict[str, Any]], step_losses: list[list[float]]) -> list[float]:
    if not step_losses:
        return [h["epoch"] for h in history]
    last = step_losses[-1][0]
    return [last * h["epoch"] / len(history) for h in history]


def confusion_plot(matrix: list[list[int]], labels: list[str]) -> str | None:
    if not matrix:
        return None
    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    return _png(fig)


def write_report(path: Path, context: dict[str, Any]) -> None:
    """Render report.html from the run's numbers. CONTEXT keys: name, spec (dict), metrics, details,
    history, step_losses, labels, metric, baseline_method, warning, findings, comparison; details["energy"] (the
    energy meter's record) where the run has one."""
    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    details = context.get("details", {})
    test_detail = details.get("fine_tuned", {}).get("test", {})
    html = env.get_template("run_report.html").render(
        **context,
        curves=learning_curves(context["history"], context.get("step_losses", []), context["metric"]),
        confusion=confusion_plot(test_detail.get("confusion_matrix", []), context["labels"]),
        per_class=test_detail.get("per_class", {}),
        baseline_per_class=details.get("baseline", {}).get("test", {}).get("per_class", {}),
        energy=summary(details["energy"]) if "energy" in details else None,
        chosen=defaults_summary(details.get("defaults")),
    )
    from tunelab.run.files import write_text

    write_text(path, html)
