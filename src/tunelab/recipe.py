"""fine_tune(spec) -> Run: the whole flow, top to bottom.

plan -> prepare -> baseline -> adapt -> validate -> package. Each step is a plain function call; the
run directory is what they leave behind, and what `tunelab evaluate / predict` read later.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from tunelab import __version__, catalog, methods
from tunelab.artifacts import atomic_dir, checkpoint_path, read_json, write_json, write_text
from tunelab.data import DataError, Prepared, prepare
from tunelab.evaluation import compare, headline, overfitting_warning
from tunelab.reports import data_report
from tunelab.reports.card import model_card
from tunelab.reports.html import write_report
from tunelab.spec import RunSpec, dump_spec
from tunelab.tasks import get_task
from tunelab.training import TrainState, fit, predict_logits, split_metrics

EVAL_SPLITS = ("validation", "test")


class RunError(RuntimeError):
    """A run that cannot start as asked (exists already, nothing to resume, spec changed)."""


@dataclass
class Run:
    dir: Path
    metrics: dict[str, Any]
    state: TrainState
    comparison: dict[str, Any]


def _open_run_dir(spec: RunSpec, resume: bool, overwrite: bool, accelerator: Accelerator) -> Path:
    """Create the run directory, or check that resuming into it is safe."""
    run_dir = spec.run_dir()
    stored = run_dir / "spec.yaml"
    if resume:
        if checkpoint_path(run_dir) is None:
            raise RunError(f"{run_dir}: no checkpoint to resume from; run without --resume")
        if stored.is_file() and stored.read_text() != dump_spec(spec):
            raise RunError(f"{run_dir}: the spec changed since this run started; resume with the same spec "
                           "or start a new run (--name)")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            hint = " or --resume to continue it" if checkpoint_path(run_dir) else ""
            raise RunError(f"{run_dir} already exists; pass --overwrite to replace it{hint}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(stored, dump_spec(spec))
    accelerator.wait_for_everyone()
    return run_dir


def _check_data(prepared: Prepared, force: bool, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
    """Write the data report; stop on errors unless forced (and then say so in the report)."""
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    report = data_report.build(prepared.findings, sizes, prepared.files, forced=force and bool(prepared.errors))
    if accelerator.is_main_process:
        data_report.write(report, run_dir)
        accelerator.print(f"data: {data_report.headline(report)}")
    if prepared.errors and not force:
        details = "\n".join(f.render() for f in prepared.errors)
        raise DataError(f"the data has {len(prepared.errors)} error(s); fix them or pass --force "
                        f"(report: {run_dir / 'data_report.html'}):\n{details}")
    return report


def start_run(spec: RunSpec, resume: bool, overwrite: bool, started: float) -> tuple[Accelerator, Path]:
    """The start every recipe shares: processes checked, seed set, run directory opened, run.json 'running'."""
    accelerator = Accelerator(gradient_accumulation_steps=spec.training.gradient_accumulation_steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes != world:
        # torchrun started several processes, but each thinks it is alone: they would all write the run.
        raise RunError(f"{world} processes were launched but accelerate sees {accelerator.num_processes}; "
                       "on a machine without GPUs set ACCELERATE_USE_CPU=1 (see README, 'More than one machine')")
    set_seed(spec.training.seed)
    run_dir = _open_run_dir(spec, resume, overwrite, accelerator)
    if accelerator.is_main_process:
        write_json(run_dir / "run.json", {"status": "running", "started": started, "tunelab": __version__,
                                          "processes": accelerator.num_processes})
    return accelerator, run_dir


def fine_tune(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False) -> Run:
    """Fine-tune spec.model.base on spec.data and leave a complete run directory behind."""
    methods.check_supported(spec.model.method)  # e.g. QLoRA without CUDA: refused before any work
    if spec.generative:
        from tunelab.recipe_lm import fine_tune_lm

        return fine_tune_lm(spec, resume=resume, force=force, overwrite=overwrite)
    started = time.time()
    accelerator, run_dir = start_run(spec, resume, overwrite, started)
    main = accelerator.is_main_process

    # plan: resolve the base model
    base = catalog.resolve(spec.model.base)
    catalog.check_loadable(base)
    task_cls = get_task(spec.task)

    # prepare: read, check, split (image tasks read and check images their own way)
    if hasattr(task_cls, "prepare_data"):
        prepared = task_cls.prepare_data(spec, force)
    else:
        prepared = prepare(spec.data, spec.training.seed, force, tokenizer=AutoTokenizer.from_pretrained(base))
    data_summary = _check_data(prepared, force, run_dir, accelerator)
    splits = prepared.splits
    if hasattr(task_cls, "for_spec"):
        task = task_cls.for_spec(spec, prepared.labels)
    else:
        task = task_cls(prepared.labels, spec.data.multi_label, spec.data.max_length)
    model = task.load_model(base)
    encoded = {name: task.encode(ds) for name, ds in splits.items()}
    truth = {name: task.truth(splits[name]) for name in EVAL_SPLITS}

    # baseline: the untuned model on the same validation and test examples
    baseline_method, baseline = "not scored (evaluation.baseline: false)", {}
    if spec.evaluation.baseline and main:
        baseline_method, baseline = task.baseline(base, splits["train"], {n: splits[n] for n in EVAL_SPLITS},
                                                  spec.evaluation.zero_shot_template)

    # adapt
    model = methods.apply(model, spec, task)
    state = fit(model, task, encoded["train"], encoded["validation"], truth["validation"], spec, run_dir,
                accelerator, resume=resume)
    model = accelerator.unwrap_model(model)

    # validate: the best epoch's weights, scored once on test
    batch = spec.training.eval_batch_size
    logits = {n: predict_logits(model, encoded[n], task.collator(), batch, accelerator, n) for n in EVAL_SPLITS}
    fine_tuned = {n: split_metrics(task, logits[n], truth[n]) for n in EVAL_SPLITS}
    if not main:
        accelerator.wait_for_everyone()
        return Run(run_dir, {}, state, {})

    # package
    metrics = {"baseline": {n: headline(m) for n, m in baseline.items()},
               "fine_tuned": {n: headline(m) for n, m in fine_tuned.items()}}
    comparison = compare(baseline["test"], fine_tuned["test"], spec.evaluation.metric) if baseline else {}
    extras: dict[str, Any] = {}
    if hasattr(task, "report_extras"):  # e.g. misclassified thumbnails, further baselines
        extras = task.report_extras(model, splits["test"], logits["test"])  # the test logits scored above
    _save_model(model, task, run_dir)
    details = {"baseline": baseline, "fine_tuned": fine_tuned, "baseline_method": baseline_method,
               "extra_baselines": extras.get("extra_baselines", {}),
               "comparison": comparison, "best_epoch": state.best_epoch, "stopped_early": state.stopped_early}
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "evaluation.json", details)
    write_json(run_dir / "history.json", {"epochs": state.history, "steps": state.step_losses})
    warning = overfitting_warning(state.history, spec.evaluation.metric)
    write_report(run_dir / "report.html", {
        "name": run_dir.name, "spec": spec.model_dump(mode="json"), "spec_yaml": dump_spec(spec), "metrics": metrics,
        "details": details, "history": state.history, "step_losses": state.step_losses, "labels": task.labels,
        "metric": spec.evaluation.metric, "baseline_method": baseline_method, "warning": warning,
        "findings": prepared.findings, "version": __version__, **extras})
    write_text(run_dir / "model_card.md", model_card(spec, prepared, metrics, details, methods.trainable_summary(model),
                                                      data_report.headline(data_summary)))
    write_json(run_dir / "run.json", {"status": "completed", "started": started, "finished": time.time(),
                                      "tunelab": __version__, "processes": accelerator.num_processes,
                                      "resumed": resume, "best_epoch": state.best_epoch})
    accelerator.wait_for_everyone()
    return Run(run_dir, metrics, state, comparison)


def _save_model(model: Any, task: Any, run_dir: Path) -> None:
    """model/: plain transformers folder (LoRA merged); adapter/: the peft adapter for LoRA runs."""
    if hasattr(task, "save_model"):  # image models: their own folder layout (still safetensors only)
        task.save_model(model, run_dir / "model")
        return
    if methods.is_peft(model):
        with atomic_dir(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
    with atomic_dir(run_dir / "model") as tmp:
        methods.merged(model).save_pretrained(tmp, safe_serialization=True)
        task.tokenizer.save_pretrained(tmp)


def load_run_spec(run_dir: str | Path) -> RunSpec:
    """The resolved spec a run was trained with."""
    from tunelab.spec import load_spec

    path = Path(run_dir) / "spec.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no spec.yaml)")
    return load_spec(path)


def run_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return read_json(path) if path.is_file() else {"status": "unknown"}
