"""fine_tune_lm(spec) -> Run: the recipe for the generative tasks (chat, completion), top to bottom.

Same steps and run directory as the classifier recipe; what differs is how a model is judged. There is
no label to be right about, so the untuned base and the fine-tuned model are compared on the same
held-out examples by (1) the loss and perplexity on the tokens that would be trained (the assistant
answers), and (2) answers generated greedily for held-out prompts, scored against the reference
answers (exact match, token F1, ROUGE-L) and shown side by side in the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunelab.auto.defaults import choose_learning_rate
from tunelab.data import DataError
from tunelab.evaluate import gate
from tunelab.lm.generation import generate_texts
from tunelab.lm.metrics import generation_metrics
from tunelab.recipes.common import (Run, check_data, interruptible, mark_completed, package, resolve_base, start_meter,
                                    start_run)
from tunelab.reports.card import lm_model_card
from tunelab.reports.lm_report import write_lm_report
from tunelab.run import RunDir
from tunelab.run.files import write_json, write_text
from tunelab.spec import RunSpec
from tunelab.tasks import get_task
from tunelab.tasks.causal_lm import truncation_findings
from tunelab.train import methods
from tunelab.train.hooks import RunHooks
from tunelab.train.loop import fit


def answer(model: Any, task: Any, prompts: list[dict[str, Any]], spec: RunSpec, desc: str) -> tuple[list, list[str]]:
    """Greedy answers (ids, texts) to PROMPTS; batch size fixed so a later parity check repeats it exactly."""
    if not prompts:
        return [], []
    return generate_texts(model, task.tokenizer, [p["prompt_ids"] for p in prompts],
                          spec.evaluation.generation.max_new_tokens, batch_size=8, desc=desc)


def score(model: Any, task: Any, encoded: Any, prompts: list[dict[str, Any]], spec: RunSpec, split: str,
          generate: bool = True) -> tuple[dict[str, Any], list[str], list]:
    """Loss/perplexity on a split, plus generation metrics on its prompts. Returns (metrics, texts, ids)."""
    metrics = task.evaluate_loss(model, encoded, spec.training.eval_batch_size, desc=f"{split} loss")
    ids, texts = answer(model, task, prompts, spec, f"{split} answers") if generate else ([], [])
    if texts:
        gen = generation_metrics(texts, [p["reference"] for p in prompts])
        metrics.update({k: gen[k] for k in ("exact_match", "token_f1", "rouge_l")}, prompts=gen["n"])
    return metrics, texts, ids


def compare_lm(base: dict[str, Any], tuned: dict[str, Any], metric: str) -> dict[str, Any]:
    """Base vs fine-tuned on the test split, in the direction the metric improves."""
    if metric not in base or metric not in tuned:
        return {}
    gain = (base[metric] - tuned[metric]) if metric == "loss" else (tuned[metric] - base[metric])
    return {"metric": metric, "baseline": base[metric], "fine_tuned": tuned[metric], "gain": gain,
            "n": tuned.get("prompts" if metric != "loss" else "n"), "better": gain > 0,
            "lower_is_better": metric == "loss"}


def fine_tune_lm(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False,
                 hooks: RunHooks | None = None) -> Any:
    """Fine-tune a causal LM on chat or completion data and leave a complete run directory. HOOKS: see
    tunelab.train.hooks (a search trial scores validation only)."""
    hooks = hooks or RunHooks()
    held_out = hooks.held_out()
    started = time.time()
    # plan: resolve the base model and the settings that depend on it (stored in the run's spec.yaml);
    # the tokenizer carries the chat template used in training and later
    base = resolve_base(spec)
    chosen = {"learning_rate": choose_learning_rate(spec, base)}
    accelerator, run_dir, resume = start_run(spec, resume, overwrite, started)
    meter = start_meter(spec, accelerator)  # energy and CO2 from here to the end of validation (main process)
    main = accelerator.is_main_process
    task = get_task(spec.task).from_spec(spec)
    tokenizer = task.load_tokenizer(base)

    # prepare: read, check (doctor), split, render; the truncation report joins the data report
    prepared = task.prepare_data(spec, base, force, tokenizer=tokenizer)
    encoded = {name: task.encode(ds) for name, ds in prepared.splits.items()}
    prepared.findings += truncation_findings(encoded, spec.data.max_length)
    data_summary = check_data(prepared, force, run_dir, accelerator)
    if not len(encoded["train"]):
        raise DataError("no training example has a token to train on; see the data report")
    prompts = {name: task.prompts(prepared.splits[name], spec) for name in held_out}
    model = task.load_model(base)

    # baseline: the untuned model on the same held-out tokens and prompts
    baseline: dict[str, Any] = {}
    base_answers: list[str] = []
    if spec.evaluation.baseline:
        for name in held_out:
            baseline[name], texts, _ = score(model, task, encoded[name], prompts[name], spec, name,
                                             generate=name == "test")
            if name == "test":
                base_answers = texts
        accelerator.print("baseline: " + ", ".join(f"{n} loss {baseline[n]['loss']:.4f}" for n in held_out))

    # adapt
    model = task.apply_method(model, spec)

    def evaluate(m: Any) -> dict[str, Any]:
        metrics, _, _ = score(accelerator.unwrap_model(m), task, encoded["validation"], prompts["validation"], spec,
                              "validation", generate=spec.evaluation.generation.every_epoch)
        return metrics

    with interruptible(run_dir, started, accelerator):
        state = fit(model, task, encoded["train"], spec, run_dir, accelerator, resume=resume, evaluate=evaluate,
                    hooks=hooks)
    model = accelerator.unwrap_model(model)

    # validate: the best epoch's weights, once on validation and test (a search trial: validation only)
    fine_tuned: dict[str, Any] = {}
    tuned_answers: list[str] = []
    tuned_ids: list = []
    for name in held_out:
        fine_tuned[name], texts, ids = score(model, task, encoded[name], prompts[name], spec, name,
                                             generate=name == "test")
        if name == "test":
            tuned_answers, tuned_ids = texts, ids
    if not main:
        accelerator.wait_for_everyone()
        return Run(run_dir, {}, state, {})

    # package
    samples = [{**{k: p[k] for k in ("location", "reference", "prompt_ids")},
                "prompt": task.tokenizer.decode(p["prompt_ids"]),
                "base": base_answers[i] if i < len(base_answers) else None,
                "fine_tuned": tuned_answers[i], "fine_tuned_ids": tuned_ids[i]}
               for i, p in enumerate(prompts.get("test", []))]
    verdict = lm_verdict(spec, baseline, fine_tuned, state)
    metrics = {"baseline": baseline, "fine_tuned": fine_tuned}
    comparison = compare_lm(baseline.get("test", {}), fine_tuned.get("test", {}), spec.evaluation.metric)
    task.save(model, RunDir(run_dir))
    run = RunDir(run_dir)
    write_json(run.file(RunDir.GENERATIONS), {"max_new_tokens": spec.evaluation.generation.max_new_tokens,
                                              "batch_size": 8, "samples": samples})
    details = {"defaults": chosen, "comparison": comparison, "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
               "stop_reason": state.stop_reason,
               "baseline_method": "the untuned base model on the same held-out examples and prompts",
               "loss_on": task.describe_loss(spec),
               "truncation": {n: {"truncated": len(e.truncated), "tokens_cut": e.tokens_cut,
                                  "untrainable": len(e.untrainable), "examples": len(e),
                                  "trained_tokens": e.trained_tokens} for n, e in encoded.items()},
               "gate": verdict.to_dict()}
    details["energy"] = meter.stop()  # the reports and the model card show it; run.json records it
    package(run_dir, metrics, details, state)
    write_lm_report(run.file(RunDir.REPORT), spec, metrics, details, state, samples, prepared.findings)
    write_text(run.file(RunDir.MODEL_CARD), lm_model_card(spec, task, prepared, metrics, details,
                                                          methods.trainable_summary(model)))
    mark_completed(run_dir, state, started, resume, accelerator, verdict, details["energy"])
    accelerator.wait_for_everyone()
    return Run(run_dir, metrics, state, comparison, verdict.to_dict())


def lm_verdict(spec: RunSpec, baseline: dict[str, Any], fine_tuned: dict[str, Any], state: Any) -> gate.Verdict:
    """The promotion gate on the validation split: by the spec's metric where both models were scored on it
    there (generation metrics need generation.every_epoch), else by the validation loss, which both always are."""
    metric = spec.evaluation.metric
    base_val, tuned_val = baseline.get("validation"), fine_tuned["validation"]
    if metric not in tuned_val or (base_val is not None and metric not in base_val):
        metric = "loss"
    verdict = gate.judge(base_val, tuned_val, metric, metric == "loss")
    if not verdict.promoted:
        verdict.diagnosis = gate.diagnose(state.history, metric, metric == "loss", spec.learning_rate,
                                          spec.training.epochs)
    return verdict


def score_saved_test(run: RunDir) -> dict[str, Any]:
    """The test split of a finished run scored after the fact (a search's winner, whose training left test
    unscored): the saved model and the untuned base on the same test tokens and prompts, as the recipe would."""
    spec = run.load_spec()
    task, model = get_task(spec.task).from_saved(run, spec)
    base = resolve_base(spec)
    test = task.prepare_data(spec, base, True, tokenizer=task.tokenizer).splits["test"]
    encoded, prompts = task.encode(test), task.prompts(test, spec)
    result: dict[str, Any] = {"fine_tuned": {"test": score(model, task, encoded, prompts, spec, "test")[0]},
                              "baseline": {}}
    if spec.evaluation.baseline:
        result["baseline"]["test"] = score(task.load_model(base), task, encoded, prompts, spec, "test")[0]
    return result
