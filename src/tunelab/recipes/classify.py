"""fine_tune_classifier(spec) -> Run: the recipe of the classify family (text, image, text+image), top to bottom.

plan -> prepare -> baseline -> adapt -> validate -> package. Each step is a plain function call on the task
(tunelab.tasks.base.ClassifierTask); the run directory is what they leave behind, and what
`tunelab evaluate / predict / serve` read later.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tunelab import __version__
from tunelab.auto.defaults import choose_class_weights, choose_learning_rate
from tunelab.data.findings import column
from tunelab.evaluate import gate
from tunelab.evaluate.metrics import compare, headline, metric_function, overfitting_warning
from tunelab.recipes.common import (Run, check_data, interruptible, mark_completed, package, resolve_base, start_meter,
                                    start_run)
from tunelab.reports import data_report
from tunelab.reports.card import model_card
from tunelab.reports.html import write_report
from tunelab.run import RunDir
from tunelab.run.files import write_text
from tunelab.spec import RunSpec, dump_spec
from tunelab.tasks import get_task
from tunelab.train import methods, trainers
from tunelab.train.hooks import RunHooks
from tunelab.train.loop import evaluate_split, predict_logits, split_metrics


def fine_tune_classifier(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False,
                         hooks: RunHooks | None = None) -> Run:
    """Fine-tune spec.model.base on spec.data and leave a complete run directory behind. HOOKS: see
    tunelab.train.hooks (a search trial scores validation only)."""
    hooks = hooks or RunHooks()
    held_out = hooks.held_out()
    started = time.time()
    # plan: resolve the base model and the settings that depend on it (stored in the run's spec.yaml)
    base = resolve_base(spec)
    chosen = {"learning_rate": choose_learning_rate(spec, base)}
    accelerator, run_dir, resume = start_run(spec, resume, overwrite, started)
    meter = start_meter(spec, accelerator)  # energy and CO2 from here to the end of validation (main process)
    main = accelerator.is_main_process
    task_cls = get_task(spec.task)
    method = methods.for_spec(spec)  # how the model is adapted and trained (tunelab.train.methods)

    # prepare: read, check, split
    prepared = task_cls.prepare_data(spec, base, force)
    data_summary = check_data(prepared, force, run_dir, accelerator)
    splits = prepared.splits
    task = task_cls.from_spec(spec, prepared.labels)
    weights, chosen["class_weights"] = choose_class_weights(spec.training.class_weights, prepared.findings,
                                                            column(splits["train"], "label"), task.labels,
                                                            task.multi_label)
    task.use_class_weights(weights)
    if main:
        accelerator.print(f"defaults: learning rate {spec.learning_rate:g} ({chosen['learning_rate']['why']}); "
                          f"class weights {chosen['class_weights']['why']}")
    model = task.load_model(base)
    encoded = {name: task.encode(ds) for name, ds in splits.items()}
    truth = {name: task.truth(splits[name]) for name in held_out}

    # baseline: the untuned model on the same validation and test examples
    baseline_method, baseline, baseline_predictions = "not scored (evaluation.baseline: false)", {}, {}
    if spec.evaluation.baseline and main:
        baseline_method, baseline = task.baseline(base, splits["train"], {n: splits[n] for n in held_out}, spec)
        baseline_predictions = {n: m.pop("predictions") for n, m in baseline.items()}

    # adapt: the method trains (tunelab's loop, or its own trainer) and hands back the model to validate
    model = task.apply_method(model, spec)
    batch = spec.training.eval_batch_size
    with interruptible(run_dir, started, accelerator):
        model, state = trainers.train(method, model, trainers.TrainJob(
            task, base, splits["train"], encoded["train"], spec, run_dir, accelerator, resume=resume,
            evaluate=lambda m: evaluate_split(m, task, encoded["validation"], truth["validation"], batch, accelerator),
            class_weights=weights, hooks=hooks))

    # validate: the best epoch's weights, scored once on test (a search trial: validation only)
    logits = {n: predict_logits(model, encoded[n], task.collator(), batch, accelerator, n) for n in held_out}
    fine_tuned = {n: split_metrics(task, logits[n], truth[n]) for n in held_out}
    if not main:
        accelerator.wait_for_everyone()
        return Run(run_dir, {}, state, {})

    # gate: promoted only when it beats the baseline on validation (tunelab.evaluate.gate)
    verdict = classifier_verdict(task, spec, baseline, fine_tuned, truth, baseline_predictions, logits, state,
                                 splits["train"])

    # package
    metrics = {"baseline": {n: headline(m) for n, m in baseline.items()},
               "fine_tuned": {n: headline(m) for n, m in fine_tuned.items()}}
    scored_test = "test" in fine_tuned
    comparison = compare(baseline["test"], fine_tuned["test"], spec.evaluation.metric) if baseline and scored_test else {}
    # the test logits scored above
    extras: dict[str, Any] = task.report_extras(model, splits["test"], logits["test"]) if scored_test else {}
    task.save(model, RunDir(run_dir))
    details = {"defaults": chosen, "baseline": baseline, "fine_tuned": fine_tuned, "baseline_method": baseline_method,
               "extra_baselines": extras.get("extra_baselines", {}),
               "comparison": comparison, "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
               "stop_reason": state.stop_reason,
               "gate": verdict.to_dict()}
    details["energy"] = meter.stop()  # the reports and the model card show it; run.json records it
    package(run_dir, metrics, details, state)
    run = RunDir(run_dir)
    warning = overfitting_warning(state.history, spec.evaluation.metric)
    write_report(run.file(RunDir.REPORT), {
        "name": run_dir.name, "spec": spec.model_dump(mode="json"), "spec_yaml": dump_spec(spec), "metrics": metrics,
        "details": details, "history": state.history, "step_losses": state.step_losses, "labels": task.labels,
        "metric": spec.evaluation.metric, "baseline_method": baseline_method, "warning": warning,
        "findings": prepared.findings, "version": __version__, "gate": verdict.to_dict(), **extras})
    write_text(run.file(RunDir.MODEL_CARD), model_card(spec, task, prepared, metrics, details,
                                                       methods.trainable_summary(model),
                                                       data_report.headline(data_summary)))
    mark_completed(run_dir, state, started, resume, accelerator, verdict, details["energy"])
    accelerator.wait_for_everyone()
    return Run(run_dir, metrics, state, comparison, verdict.to_dict())


def classifier_verdict(task: Any, spec: RunSpec, baseline: dict[str, Any], fine_tuned: dict[str, Any],
                       truth: dict[str, Any], baseline_predictions: dict[str, Any], logits: dict[str, Any],
                       state: Any, train: Any) -> gate.Verdict:
    """The promotion gate on the validation split, with a paired bootstrap interval from both models'
    per-example predictions, and the diagnosis when the fine-tuned model does not beat the baseline."""
    metric = spec.evaluation.metric
    predicted = task.predict_ids(logits["validation"])
    paired = None
    if "validation" in baseline_predictions:
        paired = (truth["validation"], np.asarray(baseline_predictions["validation"]), predicted,
                  metric_function(metric, task.multi_label))
    verdict = gate.judge(baseline.get("validation"), fine_tuned["validation"], metric, spec.lower_is_better,
                         paired=paired, seed=spec.training.seed)
    if not verdict.promoted:
        verdict.diagnosis = gate.diagnose(state.history, metric, spec.lower_is_better, spec.learning_rate,
                                          spec.training.epochs, list(train["label"]), predicted)
    return verdict
