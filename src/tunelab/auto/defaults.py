"""Settings tunelab chooses for the user when the spec leaves them out: the learning rate by method and model
size, and class weights when the training labels are imbalanced.

Why by size: the old single default (2e-5 for full fine-tuning, 2e-4 for LoRA) is the BERT-base / LLM
convention. On a 6-layer, 384-wide MiniLM it under-trains: the rare class of an imbalanced set ends at F1 0,
and a one-epoch LoRA run ends below its untuned baseline. Narrow models tolerate, and need, larger steps;
wide ones (BERT-large, RoBERTa-large) need smaller ones to stay stable. The tables live in each task's
TaskRules (`learning_rate_by_width`); the evidence (published grids and the measured grid of
benchmarks/defaults.py) is in docs/defaults.md.

Why class weights: a class with 1.6% of the training rows contributes 1.6% of the loss, so an unweighted model
may never predict it and still reach a good accuracy. When the data doctor reports class imbalance, the loss
weights each class by n / (k * count) (scikit-learn's "balanced"), unless `training.class_weights: none`.
Every choice is recorded with its reason in evaluation.json ("defaults"), the report and the model card.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.data.findings import Finding

WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim")  # what configs call the model width


def model_width(base: str) -> tuple[int | None, int | None]:
    """(hidden size, number of layers) from the base model's config.json, or (None, None) when it has none
    (an image model, a folder without a transformers config): the method's plain default then applies."""
    path = Path(base) / "config.json"
    if not path.is_file():
        return None, None
    config = json.loads(path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # composite configs keep the language model's width inside
    width = next((config[k] for k in WIDTH_KEYS if isinstance(config.get(k), int)), None)
    layers = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                   if isinstance(config.get(k), int)), None)
    return width, layers


def choose_learning_rate(spec: Any, base: str) -> dict[str, Any]:
    """Fill spec.training.learning_rate when the spec leaves it out, from the task's table for the method and
    the base model's width; return the record of what was chosen and why (also when the spec set it)."""
    method = spec.model.method or ""
    if spec.training.learning_rate:
        return {"value": spec.training.learning_rate, "source": "spec", "why": "set in the spec (training.learning_rate)"}
    rules = type(spec).RULES
    width, layers = model_width(base)
    value, why = rules.learning_rate_for(method, width)
    if width is not None:
        why = f"{why}; the base model is {layers} layers x {width} wide"
    spec.training.learning_rate = value
    return {"value": value, "source": "tunelab default", "why": why, "width": width, "layers": layers}


def choose_class_weights(setting: str, findings: list[Finding], train_labels: list[Any], labels: list[str],
                         multi_label: bool) -> tuple[list[float] | None, dict[str, Any]]:
    """(weights per label id or None, the record). SETTING: training.class_weights — 'auto' weights the loss
    only when the data doctor found class imbalance, 'balanced' always, 'none' never."""
    imbalanced = any(f.check == "class-imbalance" for f in findings)
    if setting == "none" or (setting == "auto" and not imbalanced):
        why = ("off (training.class_weights: none)" if setting == "none"
               else "off: the data doctor found no class imbalance (auto)")
        return None, {"applied": False, "setting": setting, "why": why}
    counts = Counter(lab for value in train_labels for lab in (value if isinstance(value, list) else [value]))
    n = len(train_labels)
    if multi_label:  # BCE pos_weight: negatives / positives of each label
        weights = [float((n - counts[lab]) / counts[lab]) if counts[lab] else 1.0 for lab in labels]
        kind = "per-label positive weight = negatives / positives (BCE pos_weight)"
    else:
        present = [lab for lab in labels if counts[lab]]
        weights = [float(n / (len(present) * counts[lab])) if counts[lab] else 0.0 for lab in labels]
        kind = "n / (k * count) per class (scikit-learn 'balanced')"
    why = ("on: the data doctor reported class imbalance (auto); turn off with training.class_weights: none"
           if setting == "auto" else "on (training.class_weights: balanced)")
    return weights, {"applied": True, "setting": setting, "why": why, "kind": kind,
                     "weights": {lab: round(w, 4) for lab, w in zip(labels, weights)}}



def summary(chosen: dict[str, Any] | None) -> str:
    """One line for the report and the model card: each chosen setting and why ('' when nothing was recorded)."""
    if not chosen:
        return ""
    parts = []
    lr = chosen.get("learning_rate")
    if lr:
        parts.append(f"learning rate {lr['value']:g} ({lr['why']})")
    weights = chosen.get("class_weights")
    if weights:
        table = ", ".join(f"{lab} {w:g}" for lab, w in weights.get("weights", {}).items())
        parts.append(f"class weights {weights['why']}" + (f" [{table}]" if table else ""))
    return "; ".join(parts)
