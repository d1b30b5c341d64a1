"""Metrics, the baseline comparison and the overfitting check.

Every metric dict carries `n`, the number of examples scored, so a number is never quoted without
its sample size; baseline and fine-tuned scores are computed on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Scorer:
    """One classification metric as score(y_true, y_pred), plus `resampled`: the same metric on many
    resamples at once (the gate's bootstrap scores two models on a thousand resamples; one scikit-learn call
    per resample took seconds per run). Single-label resamples are scored from per-class counts with numpy,
    with scikit-learn's conventions: macro-F1 averages over the labels present in either truth or predictions
    of that resample, an undefined F1 counts 0, micro-F1 equals accuracy. Multi-label falls back to a loop."""

    metric: str
    multi_label: bool = False

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        if self.metric == "accuracy":
            return float(accuracy_score(y_true, y_pred))
        average = {"macro_f1": "macro", "micro_f1": "micro"}[self.metric]
        return float(f1_score(y_true, y_pred, average=average, zero_division=0))

    def resampled(self, y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The metric on each row of IDX (rounds x n indices into Y_TRUE / Y_PRED)."""
        if self.multi_label:
            return np.array([self(y_true[i], y_pred[i]) for i in idx])
        t, p = y_true[idx], y_pred[idx]
        if self.metric in ("accuracy", "micro_f1"):
            return (t == p).mean(axis=1)
        k = int(max(y_true.max(), y_pred.max())) + 1
        rounds = np.arange(idx.shape[0])[:, None] * k
        true_n = np.bincount((rounds + t).ravel(), minlength=idx.shape[0] * k).reshape(-1, k)
        pred_n = np.bincount((rounds + p).ravel(), minlength=idx.shape[0] * k).reshape(-1, k)
        hits = np.bincount((rounds + t).ravel(), weights=(t == p).ravel(), minlength=idx.shape[0] * k).reshape(-1, k)
        both = true_n + pred_n
        f1 = np.divide(2 * hits, both, out=np.zeros_like(hits), where=both > 0)
        present = both > 0
        return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def metric_function(metric: str, multi_label: bool = False) -> Scorer:
    """score(y_true, y_pred) for one classification metric, without the per-class tables, that can also score
    many bootstrap resamples at once (Scorer.resampled)."""
    return Scorer(metric, multi_label)


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
