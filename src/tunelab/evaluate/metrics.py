"""Metrics, the baseline comparison and the overfitting check.

Every metric dict carries `n`, the number of examples scored, so a number is never quoted without
its sample size; baseline and fine-tuned scores are computed on the same examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str],
                           multi_label: bool = False) -> dict[str, Any]:
    """accuracy (subset accuracy for multi-label), macro_f1, micro_f1, n, and per-class P/R/F1.

    Single-label inputs are class ids; multi-label inputs are 0/1 indicator matrices.
    """
    ids = list(range(len(labels)))
    kwargs: dict[str, Any] = {} if multi_label else {"labels": ids}
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0, **kwargs)
    result: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0, **kwargs)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0, **kwargs)),
        "n": int(len(y_true)),
        "per_class": {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "support": int(support[i])} for i in ids},
    }
    if not multi_label:
        result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=ids).tolist()
    return result


def metric_function(metric: str, multi_label: bool = False) -> Any:
    """score(y_true, y_pred) for one classification metric, without the per-class tables (the gate's
    bootstrap calls it a thousand times)."""
    if metric == "accuracy":
        return lambda t, p: float(accuracy_score(t, p))
    average = {"macro_f1": "macro", "micro_f1": "micro"}[metric]
    return lambda t, p: float(f1_score(t, p, average=average, zero_division=0))


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a split (drops per-class tables and matrices)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def compare(baseline: dict[str, Any], fine_tuned: dict[str, Any], metric: str) -> dict[str, Any]:
    """Baseline vs fine-tuned on one split: both scores, the gain, and whether the gain is real."""
    if baseline.get("n") != fine_tuned.get("n"):
        raise ValueError(f"baseline scored {baseline.get('n')} examples, fine-tuned {fine_tuned.get('n')}: not comparable")
    gain = fine_tuned[metric] - baseline[metric]
    return {"metric": metric, "baseline": baseline[metric], "fine_tuned": fine_tuned[metric], "gain": gain,
            "n": fine_tuned["n"], "better": gain > 0}


def overfitting_warning(history: list[dict[str, Any]], metric: str) -> str | None:
    """A warning when validation got worse while training kept improving (two epochs or more).

    Looks at the last epochs: training loss falling while validation loss rises, or the validation
    metric falling below its best while the training metric still rises.
    """
    epochs = [h for h in history if "val_loss" in h]
    if len(epochs) < 3:
        return None
    a, b, c = epochs[-3:]
    loss_diverges = c["train_loss"] < b["train_loss"] < a["train_loss"] and c["val_loss"] > b["val_loss"] > a["val_loss"]
    best = max(h[f"val_{metric}"] for h in epochs)
    metric_drops = c[f"val_{metric}"] < best and c.get(f"train_{metric}", 0) > a.get(f"train_{metric}", 0)
    if loss_diverges:
        return (f"validation loss rose for two epochs ({a['val_loss']:.3f} -> {c['val_loss']:.3f}) while training "
                f"loss fell ({a['train_loss']:.3f} -> {c['train_loss']:.3f}): the model is starting to overfit")
    if metric_drops and c["train_loss"] < a["train_loss"]:
        return (f"validation {metric} fell to {c[f'val_{metric}']:.3f} from a best of {best:.3f} while training "
                "improved: the best epoch was kept, but more epochs will not help")
    return None
