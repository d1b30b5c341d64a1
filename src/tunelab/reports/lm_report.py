"""The report of a generative run: loss curves, base vs fine-tuned numbers, answers side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from tunelab.auto.defaults import summary as defaults_summary
from tunelab.auto.energy import summary
from tunelab.run.files import write_text
from tunelab.reports.html import _epoch_steps, _png, plt
from tunelab.spec import RunSpec, dump_spec

LM_METRICS = ("loss", "perplexity", "exact_match", "token_f1", "rouge_l")


def lm_curves(history: list[dict[str, Any]], step_losses: list[list[float]]) -> str | None:
    """Training loss per step and per epoch against validation loss; validation perplexity per epoch."""
    if not history:
        return None
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 3.8))
    if step_losses:
        steps, losses = zip(*step_losses)
        ax_loss.plot(steps, losses, color="#bbb", lw=0.8, label="train loss (step)")
    at = _epoch_steps(history, step_losses)
    ax_loss.plot(at, [h["train_loss"] for h in history], "o-", label="train loss (epoch mean)")
    ax_loss.plot(at, [h["val_loss"] for h in history], "s-", label="validation loss")
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("loss (trained tokens)")
    ax_loss.legend()
    ax_ppl.plot([h["epoch"] for h in history], [h.get("val_perplexity") for h in history], "s-", label="validation")
    ax_ppl.set_xlabel("epoch")
    ax_ppl.set_ylabel("perplexity")
    ax_ppl.legend()
    return _png(fig)


def write_lm_report(path: Path, spec: RunSpec, metrics: dict[str, Any], details: dict[str, Any], state: Any,
                    samples: list[dict[str, Any]], findings: list[Any]) -> None:
    env = Environment(loader=PackageLoader("tunelab", "reports/templates"), autoescape=select_autoescape())
    html = env.get_template("lm_report.html").render(
        name=path.parent.name, spec=spec.model_dump(mode="json"), spec_yaml=dump_spec(spec), metrics=metrics,
        details=details, history=state.history, samples=samples, findings=findings, metric_names=LM_METRICS,
        curves=lm_curves(state.history, state.step_losses), metric=spec.evaluation.metric,
        energy=summary(details["energy"]) if "energy" in details else None,
        chosen=defaults_summary(details.get("defaults")))
    write_text(path, html)
