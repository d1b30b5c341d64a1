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

from tunelab import __version__, catalog, methods
from tunelab.artifacts import atomic_dir, write_json, write_text
from tunelab.data import DataError
from tunelab.data.lm_data import prepare_chat, prepare_completion
from tunelab.gen_metrics import generation_metrics
from tunelab.generation import generate_texts
from tunelab.spec import RunSpec, dump_spec
from tunelab.tasks import get_task
from tunelab.tasks.causal_lm import truncation_findings
from tunelab.training import fit

EVAL_SPLITS = ("validation", "test")


def build_task(spec: RunSpec) -> Any:
    return get_task(spec.task)(spec.data.max_length, spec.training.batching, spec.data.train_on,
                               spec.data.chat_template)


def _prompts(task: Any, ds: Any, spec: RunSpec) -> list[dict[str, Any]]:
    g = spec.evaluation.generation
    if spec.task == "completion":
        return task.prompts(ds, g.prompts, g.max_new_tokens)
    return task.prompts(ds, g.prompts)


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


def fine_tune_lm(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False) -> Any:
    """Fine-tune a causal LM on chat or completion data and leave a complete run directory."""
    from tunelab.recipe import Run, _check_data, start_run
    from tunelab.reports.lm_report import write_lm_report

    started = time.time()
    methods.check_supported(spec.model.method)
    accelerator, run_dir = start_run(spec, resume, overwrite, started)
    main = accelerator.is_main_process

    # plan: resolve the base model; the tokenizer carries the chat template used in training and later
    base = catalog.resolve(spec.model.base)
    catalog.check_loadable(base)
    task = build_task(spec)
    tokenizer = task.load_tokenizer(base)

    # prepare: read, check (doctor), split, render; the truncation report joins the data report
    prepare = prepare_chat if spec.task == "chat" else prepare_completion
    prepared = prepare(spec.data, spec.training.seed, force, tokenizer=tokenizer)
    encoded = {name: task.encode(ds) for name, ds in prepared.splits.items()}
    prepared.findings += truncation_findings(encoded, spec.data.max_length)
    data_summary = _check_data(prepared, force, run_dir, accelerator)
    if not len(encoded["train"]):
        raise DataError("no training example has a token to train on; see the data report")
    prompts = {name: _prompts(task, prepared.splits[name], spec) for name in EVAL_SPLITS}
    model = task.load_model(base, spec.model.method)

    # baseline: the untuned model on the same held-out tokens and prompts
    baseline: dict[str, Any] = {}
    base_answers: list[str] = []
    if spec.evaluation.baseline:
        for name in EVAL_SPLITS:
            baseline[name], texts, _ = score(model, task, encoded[name], prompts[name], spec, name,
                                             generate=name == "test")
            if name == "test":
                base_answers = texts
        accelerator.print(f"baseline: validation loss {baseline['validation']['loss']:.4f}, test loss "
                          f"{baseline['test']['loss']:.4f}")

    # adapt
    model = methods.apply(model, spec, task)

    def evaluate(m: Any) -> dict[str, Any]:
        metrics, _, _ = score(accelerator.unwrap_model(m), task, encoded["validation"], prompts["validation"], spec,
                              "validation", generate=spec.evaluation.generation.every_epoch)
        return metrics

    state = fit(model, task, encoded["train"], encoded["validation"], None, spec, run_dir, accelerator,
                resume=resume, evaluate=evaluate)
    model = accelerator.unwrap_model(model)

    # validate: the best epoch's weights, once on validation and test
    fine_tuned: dict[str, Any] = {}
    tuned_answers: list[str] = []
    tuned_ids: list = []
    for name in EVAL_SPLITS:
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
                "fine_tuned": tuned_answers[i], "fine_tuned_ids": tuned_ids[i]} for i, p in enumerate(prompts["test"])]
    metrics = {"baseline": baseline, "fine_tuned": fine_tuned}
    comparison = compare_lm(baseline.get("test", {}), fine_tuned["test"], spec.evaluation.metric) if baseline else {}
    save_lm(model, task, run_dir)
    write_json(run_dir / "generations.json", {"max_new_tokens": spec.evaluation.generation.max_new_tokens,
                                              "batch_size": 8, "samples": samples})
    details = {"comparison": comparison, "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
               "baseline_method": "the untuned base model on the same held-out examples and prompts",
               "truncation": {n: {"truncated": len(e.truncated), "tokens_cut": e.tokens_cut,
                                  "untrainable": len(e.untrainable), "examples": len(e),
                                  "trained_tokens": e.trained_tokens} for n, e in encoded.items()}}
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "evaluation.json", details)
    write_json(run_dir / "history.json", {"epochs": state.history, "steps": state.step_losses})
    write_lm_report(run_dir / "report.html", spec, metrics, details, state, samples, prepared.findings)
    write_text(run_dir / "model_card.md", lm_model_card(spec, prepared, metrics, details, methods.trainable_summary(model)))
    write_json(run_dir / "run.json", {"status": "completed", "started": started, "finished": time.time(),
                                      "tunelab": __version__, "processes": accelerator.num_processes,
                                      "resumed": resume, "best_epoch": state.best_epoch})
    accelerator.wait_for_everyone()
    return Run(run_dir, metrics, state, comparison)


def save_lm(model: Any, task: Any, run_dir: Path) -> None:
    """adapter/ (peft runs: the adapter and the tokenizer with its chat template) or model/ (full runs).

    The merged model of an adapter run is made by `tunelab export RUN --merge`, which also proves that
    the merged weights give the same greedy answers.
    """
    model.config.use_cache = True
    if methods.is_peft(model):
        with atomic_dir(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            task.tokenizer.save_pretrained(tmp)
        return
    with atomic_dir(run_dir / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        task.tokenizer.save_pretrained(tmp)


def lm_model_card(spec: RunSpec, prepared: Any, metrics: dict[str, Any], details: dict[str, Any],
                  params: dict[str, int]) -> str:
    """Model card for a generative run: base, data, method, and base-vs-tuned numbers on held-out data."""
    files = "\n".join(f"- `{f['source']}`" + (f" (sha256 `{f['sha256']}`)" if f.get("sha256") else "")
                      for f in prepared.files) or f"- bundled set `{spec.data.train}`"
    sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
    fmt = lambda d, k: f"{d[k]:.4f}" if isinstance(d.get(k), float) else "–"
    rows = []
    for split, tuned in metrics["fine_tuned"].items():
        b = metrics["baseline"].get(split, {})
        rows += [f"| {split} | {k} | {fmt(b, k)} | {fmt(tuned, k)} |" for k in
                 ("loss", "perplexity", "exact_match", "token_f1", "rouge_l") if k in tuned]
    c = details.get("comparison") or {}
    verdict = (f"On the test split the fine-tuned model is **{'better' if c['better'] else 'NOT better'}** than the "
               f"base: {c['metric']} {c['baseline']:.4f} -> {c['fine_tuned']:.4f}.\n") if c else ""
    findings = "\n".join(f"- [{f.severity}] {f.check}: {f.message}" for f in prepared.findings) or "- none"
    return f"""---
library_name: {'peft' if spec.model.method != 'full' else 'transformers'}
pipeline_tag: text-generation
base_model: {spec.model.base}
tags: [tunelab, {spec.task}, {spec.model.method}]
---
# {spec.name}

Fine-tuned by tunelab from `{spec.model.base}` for **{spec.task}** with **{spec.model.method}**
({params['trainable_params']:,} of {params['total_params']:,} parameters trained).

## Data
{files}

Examples: {sizes}. Loss on: {spec.data.train_on if spec.task == 'chat' else 'every token'}; max_length {spec.data.max_length}.

Data checks:
{findings}

## Evaluation (base vs fine-tuned, same held-out examples; answers greedy, at most {spec.evaluation.generation.max_new_tokens} tokens)
| split | metric | base | fine-tuned |
|---|---|---|---|
{chr(10).join(rows)}

{verdict}
## Training
epochs {spec.training.epochs} (best {details.get('best_epoch')}), learning rate {spec.learning_rate}, batch {spec.training.batch_size},
batching {spec.training.batching}, seed {spec.training.seed}.

## Use
`tunelab generate RUN --prompt "..."`, `tunelab chat RUN`; `tunelab export RUN --merge` writes a plain
transformers folder and checks that it reproduces these answers.
"""
