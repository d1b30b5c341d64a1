"""The model card: what a reader needs to trust or reject the model, in Markdown."""

from __future__ import annotations

from typing import Any

from tunelab.auto.defaults import summary as defaults_summary
from tunelab.auto.energy import summary
from tunelab.data import Prepared
from tunelab.spec.schema import RunSpec


def _row(split: str, metrics: dict[str, Any], baseline: dict[str, Any]) -> str:
    b = baseline.get(split, {})
    f = metrics[split]
    fmt = lambda d, k: f"{d[k]:.4f}" if k in d else "–"
    return f"| {split} | {f['n']} | {fmt(b, 'accuracy')} | {fmt(f, 'accuracy')} | {fmt(b, 'macro_f1')} | {fmt(f, 'macro_f1')} |"


def _chosen(details: dict[str, Any], prefix: str) -> str:
    """The card's line on the settings tunelab chose (learning rate, class weights) and why."""
    line = defaults_summary(details.get("defaults"))
    return prefix + line if line else ""


def _energy(details: dict[str, Any], prefix: str) -> str:
    """The card's energy line (kWh, CO2, measured or estimated and how), where the run has a record."""
    return prefix + summary(details["energy"]) if "energy" in details else ""


def model_card(spec: RunSpec, task: Any, prepared: Prepared, metrics: dict[str, Any], details: dict[str, Any],
               params: dict[str, int], data_headline: str = "") -> str:
    """Base model, data with hashes, method, hyperparameters, metrics against the baseline, limits. TASK
    (a classifier task) says what its inputs are (`input_kind`) and what loads its model/ (`library`)."""
    t = spec.training
    files = "\n".join(f"- `{f['source']}` ({f['kind']}" + (f", sha256 `{f['sha256']}`)" if f["sha256"] else ")")
                      for f in prepared.files)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
    findings = "\n".join(f"- [{f.severity}] {f.check}: {f.message}" for f in prepared.findings) or "- none"
    rows = "\n".join(_row(s, metrics["fine_tuned"], metrics["baseline"]) for s in metrics["fine_tuned"])
    lora = (f" (r={spec.model.lora.r}, alpha={spec.model.lora.alpha}, dropout={spec.model.lora.dropout}, "
            f"targets={spec.model.lora.target_modules})") if spec.model.method == "lora" else ""
    setfit = spec.model.method == "setfit"  # model/ is tunelab's SentenceClassifier, not a stock transformers class
    if setfit:
        sf = spec.model.setfit
        lora = (f" (SetFit: {sf.iterations or sf.sampling} pair iterations, {sf.body_epochs} body epoch(s), "
                f"{sf.head} head; one validation after training)")
    comparison = details.get("comparison") or {}
    verdict = ""
    if comparison:
        word = "better" if comparison["better"] else "NOT better"
        verdict = (f"\nOn the test split the fine-tuned model is **{word}** than the untuned baseline: "
                   f"{comparison['metric']} {comparison['baseline']:.4f} -> {comparison['fine_tuned']:.4f} "
                   f"({comparison['gain']:+.4f}, n={comparison['n']}).\n")
    image = "image" in task.input_kind
    energy = _energy(details, "\n- energy and CO2: ")
    chosen = _chosen(details, "\n- chosen by tunelab: ")
    inputs = (f"Images at {spec.data.image_size or 'the model default'} px, column `{spec.data.image_column}`, "
              f"augmentation `{spec.data.augment}`" + (f"; texts column `{spec.data.text_column}`, "
              f"truncated to {spec.data.max_length} tokens" if "text" in task.input_kind else "")
              ) if image else (f"Column mapping: text=`{spec.data.text_column}`, label=`{spec.data.label_column}`.\n"
                               f"Texts truncated to {spec.data.max_length} tokens")
    return f"""---
library_name: {'tunelab' if setfit else task.library}
pipeline_tag: {task.pipeline_tag}
base_model: {spec.model.base}
tags: [tunelab, {spec.task}, {spec.model.method}]
---
# {spec.name}

Fine-tuned from `{spec.model.base}` for **{spec.task}** with tunelab.
Labels: {', '.join(prepared.labels)}{' (multi-label)' if task.multi_label else ''}.

## Data
{files}

Examples per split: {sizes}. {inputs}.

Data checks before training ({data_headline}; details in `data_report.html`):
{findings}

## Method and hyperparameters
- method: {spec.model.method}{lora}; trainable parameters {params['trainable_params']:,} of {params['total_params']:,}
- epochs (max) {t.epochs}, best epoch {details.get('best_epoch')}, stopped early: {details.get('stop_reason') or details.get('stopped_early')}
- learning rate {spec.learning_rate:g}, warmup {t.warmup:.0%} then linear decay, weight decay {t.weight_decay}{chosen}
- batch size {t.batch_size} x {t.gradient_accumulation_steps} accumulation, batching {t.batching}, seed {t.seed}
- early stopping patience {t.early_stopping_patience} on validation {spec.evaluation.metric}{energy}

## Results
Baseline: {details.get('baseline_method')}. Baseline and fine-tuned model are scored on the same examples.

| split | n | baseline accuracy | fine-tuned accuracy | baseline macro-F1 | fine-tuned macro-F1 |
|---|---|---|---|---|---|
{rows}
{verdict}{_gate_line(details)}
## Limits
- Scores hold for data like the training data; expect lower quality on other domains, languages or text lengths.
- Texts longer than {spec.data.max_length} tokens are truncated: only their beginning is read.
- The validation split chose the best epoch, so the test split is the unbiased estimate.
- Labels are only as good as the training data's; the model reproduces its biases and mistakes.

## Use
{USE_IMAGE if image else USE_SETFIT if setfit else USE_TEXT.format(pipeline_tag=task.pipeline_tag)}
"""


USE_TEXT = """```python
from transformers import pipeline
clf = pipeline("{pipeline_tag}", model="model")  # this run's model/ folder
```"""
USE_SETFIT = """`tunelab predict RUN --text "..."` or `tunelab serve RUN`. `model/` holds a sentence encoder with a linear
head (safetensors; model_type `tunelab-sentence-classifier`), which transformers loads once tunelab registers it:
```python
from tunelab.fewshot.model import register_auto
from transformers import AutoModelForSequenceClassification
register_auto()
model = AutoModelForSequenceClassification.from_pretrained("model")  # this run's model/ folder
```"""
USE_IMAGE = """`tunelab predict RUN --image photo.png` (add `--text "..."` for a text + image run); `model/` holds the
weights (safetensors), tunelab's config and `preprocessor_config.json`."""


def lm_model_card(spec: RunSpec, task: Any, prepared: Any, metrics: dict[str, Any], details: dict[str, Any],
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
    energy = _energy(details, "\n\nEnergy and CO2: ")
    chosen = _chosen(details, "\nChosen by tunelab: ")
    return f"""---
library_name: {'peft' if spec.model.method != 'full' else 'transformers'}
pipeline_tag: {task.pipeline_tag}
base_model: {spec.model.base}
tags: [tunelab, {spec.task}, {spec.model.method}]
---
# {spec.name}

Fine-tuned by tunelab from `{spec.model.base}` for **{spec.task}** with **{spec.model.method}**
({params['trainable_params']:,} of {params['total_params']:,} parameters trained).

## Data
{files}

Examples: {sizes}. Loss on: {task.describe_loss(spec)}; max_length {spec.data.max_length}.

Data checks:
{findings}

## Evaluation (base vs fine-tuned, same held-out examples; answers greedy, at most {spec.evaluation.generation.max_new_tokens} tokens)
| split | metric | base | fine-tuned |
|---|---|---|---|
{chr(10).join(rows)}

{verdict}{_gate_line(details)}
## Training
epochs {spec.training.epochs} (best {details.get('best_epoch')}), learning rate {spec.learning_rate}, batch {spec.training.batch_size},
batching {spec.training.batching}, seed {spec.training.seed}.{chosen}{energy}

## Use
`tunelab generate RUN --prompt "..."`, `tunelab chat RUN`; `tunelab export RUN --merge` writes a plain
transformers folder and checks that it reproduces these answers.
"""


def _gate_line(details: dict[str, Any]) -> str:
    """The promotion gate's verdict in one line (validation split; tunelab.evaluate.gate)."""
    gate = details.get("gate") or {}
    if not gate:
        return ""
    word = "promoted" if gate.get("promoted") else "NOT promoted (serve and export refuse it without --allow-worse)"
    return f"\nPromotion gate: {word}: {gate.get('reason', '')}.\n"
