"""The promotion gate: a fine-tuned model that does not beat its untuned baseline is not a success.

`judge` compares the two on the validation split by the spec's metric (the split that chose the best epoch
and the one a decision may look at; test stays the unbiased report). The model is promoted only when it is
strictly better in the metric's direction. Beside the point estimate it gives a 95% paired bootstrap
interval of the gain where per-example predictions of both models are at hand (classifiers), so a user can
see whether a small gain is within noise. A run that is not promoted gets status `not-promoted` in
run.json, a distinct exit code from `tunelab train`, and `serve` / `export` refuse it unless told
`--allow-worse`.

`diagnose` reads the learning curves and the data and says, in plain words, what probably went wrong and
which setting to change: under-trained, diverged, overfitting, collapsed to one class, too few examples.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tunelab.run.exitcodes import NOT_PROMOTED

if TYPE_CHECKING:
    from tunelab.evaluate.metrics import Scorer

BOUNDED_METRICS = ("accuracy", "macro_f1", "micro_f1")  # metrics whose best possible value is 1.0
NOT_PROMOTED_EXIT = NOT_PROMOTED  # `tunelab train`'s exit code for a run that is not promoted (tunelab.run.exitcodes)


@dataclass
class Verdict:
    """The gate's decision and its evidence (stored under "gate" in run.json and evaluation.json)."""

    promoted: bool
    split: str
    metric: str
    lower_is_better: bool
    baseline: float | None
    fine_tuned: float
    gain: float | None  # in the metric's direction: positive = better
    n: int | None
    interval: list[float] | None = None  # 95% paired bootstrap interval of the gain
    interval_note: str = ""
    reason: str = ""
    diagnosis: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the console and the report."""
        if self.baseline is None:
            return f"promoted without a gate: {self.reason}"
        word = ("matches (both perfect)" if self.promoted and self.gain == 0 else
                "beats" if self.promoted else "does NOT beat")
        ci = (f", gain {self.gain:+.4f} (95% interval {self.interval[0]:+.4f} to {self.interval[1]:+.4f})"
              if self.interval else f", gain {self.gain:+.4f}")
        return (f"the fine-tuned model {word} the untuned baseline on {self.split}: {self.metric} "
                f"{self.baseline:.4f} -> {self.fine_tuned:.4f}{ci}, n={self.n}")


def judge(baseline: dict[str, Any] | None, fine_tuned: dict[str, Any], metric: str, lower_is_better: bool,
          split: str = "validation", paired: tuple[np.ndarray, np.ndarray, np.ndarray, Scorer] | None = None,
          seed: int = 0) -> Verdict:
    """Promote when FINE_TUNED is strictly better than BASELINE on METRIC. PAIRED = (truth, baseline
    predictions, fine-tuned predictions, score function) adds the bootstrap interval of the gain."""
    tuned = float(fine_tuned[metric])
    if not baseline or metric not in baseline:
        return Verdict(True, split, metric, lower_is_better, None, tuned, None, fine_tuned.get("n"),
                       reason="no baseline was scored (evaluation.baseline: false), so nothing to beat")
    base = float(baseline[metric])
    gain = (base - tuned) if lower_is_better else (tuned - base)
    # both perfect (F1 or accuracy 1.0): nothing left to beat on this split, and the fine-tuned model is no worse
    both_perfect = not lower_is_better and metric in BOUNDED_METRICS and base >= 1.0 and tuned >= 1.0
    promoted = bool(math.isfinite(tuned) and (gain > 0 or both_perfect))
    verdict = Verdict(promoted, split, metric, lower_is_better, base, tuned, gain, fine_tuned.get("n"))
    if both_perfect:
        verdict.interval_note = (f"the baseline is already perfect on {split}, so the gate cannot separate the two "
                                 "models: the fine-tuned one is promoted as no worse; the test split and harder "
                                 "held-out data are the real check")
    if paired is not None:
        verdict.interval = bootstrap_gain(*paired, lower_is_better=lower_is_better, seed=seed)
        if promoted and verdict.interval[0] <= 0 and not both_perfect:
            verdict.interval_note = ("the interval includes no gain: on this many held-out examples the improvement "
                                     "may be chance; more validation data would settle it")
    elif not both_perfect:
        verdict.interval_note = "no interval: per-example scores of both models are not kept for this task"
    verdict.reason = verdict.summary()
    return verdict


def bootstrap_gain(truth: np.ndarray, base_pred: np.ndarray, tuned_pred: np.ndarray, score: "Scorer",
                   lower_is_better: bool = False, rounds: int = 1000, seed: int = 0) -> list[float]:
    """95% interval of score(tuned) - score(base) over examples resampled with replacement, both models on
    the same resample (paired), in the metric's direction. All resamples are scored at once (Scorer.resampled)."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    idx = rng.integers(0, n, (rounds, n))
    gains = score.resampled(truth, tuned_pred, idx) - score.resampled(truth, base_pred, idx)
    if lower_is_better:
        gains = -gains
    low, high = np.percentile(gains, [2.5, 97.5])
    return [float(low), float(high)]


def diagnose(history: list[dict[str, Any]], metric: str, lower_is_better: bool, learning_rate: float,
             epochs: int, train_labels: list[Any] | None = None,
             tuned_predictions: np.ndarray | None = None) -> list[dict[str, str]]:
    """What the curves and the data say about a run that did not beat its baseline, each finding with the
    setting to change. Order: the most likely cause first."""
    found: list[dict[str, str]] = []
    rows = [h for h in history if "train_loss" in h]
    losses = [h["train_loss"] for h in rows] + [h.get("val_loss", 0.0) for h in rows]
    key = f"val_{metric}"
    if any(not math.isfinite(float(x)) for x in losses):
        found.append(_finding("diverged", "the loss became NaN or infinite",
                              f"lower training.learning_rate, e.g. to {learning_rate / 10:g}"))
    elif len(rows) >= 2 and rows[-1]["train_loss"] > rows[0]["train_loss"] * 1.2:
        found.append(_finding("diverged", f"the training loss rose from {rows[0]['train_loss']:.3f} to "
                              f"{rows[-1]['train_loss']:.3f}", f"lower training.learning_rate, e.g. to {learning_rate / 10:g}"))
    if tuned_predictions is not None and len(tuned_predictions) and np.ndim(tuned_predictions) == 1 \
            and len(set(np.asarray(tuned_predictions).tolist())) == 1:
        found.append(_finding("collapsed", "the fine-tuned model predicts one class for every validation example",
                              f"raise training.learning_rate (e.g. {learning_rate * 3:g}) or train longer; with "
                              "imbalanced classes, check the data report's class-imbalance finding"))
    if rows and key in rows[-1]:
        scores = [h[key] for h in rows]
        best = (min if lower_is_better else max)(scores)
        improving = len(scores) == 1 or ((scores[-1] < scores[-2]) if lower_is_better else (scores[-1] > scores[-2]))
        if scores[-1] == best and improving:
            found.append(_finding("under-trained", f"validation {metric} was still improving at the last epoch "
                                  f"({len(rows)} of {epochs})", f"more epochs (training.epochs: {max(2 * epochs, 3)}) "
                                  f"or a higher learning rate (training.learning_rate: {learning_rate * 3:g})"))
        train_key = f"train_{metric}"
        if train_key in rows[-1] and not lower_is_better and rows[-1][train_key] - rows[-1][key] > 0.2:
            found.append(_finding("overfitting", f"training {metric} {rows[-1][train_key]:.3f} is far above "
                                  f"validation {rows[-1][key]:.3f}", "more data, fewer epochs or more weight decay "
                                  "(training.weight_decay)"))
    if train_labels:
        counts = Counter(lab for v in train_labels for lab in (v if isinstance(v, list) else [v]))
        small = sorted(lab for lab, c in counts.items() if c < 8)
        if small:
            found.append(_finding("too-few-examples", f"{len(small)} class(es) have fewer than 8 training examples "
                                  f"({', '.join(map(str, small[:5]))}{', ...' if len(small) > 5 else ''})",
                                  "collect more examples of those classes, or merge rare classes"))
    if not found:
        found.append(_finding("unclear", "the curves show no single cause", "try a higher learning rate and more "
                              "epochs, or a different method (model.method)"))
    return found


def _finding(kind: str, message: str, advice: str) -> dict[str, str]:
    return {"kind": kind, "message": message, "advice": advice}


def allow(status: dict[str, Any], run: Any, allow_worse: bool, action: str) -> None:
    """Refuse ACTION (serve, export) on a run the gate did not promote, unless ALLOW_WORSE."""
    from tunelab.run.errors import RunError

    if status.get("status") != "not-promoted" or allow_worse:
        return
    reason = (status.get("gate") or {}).get("reason", "its fine-tuned model does not beat the untuned baseline")
    raise RunError(f"{run} was not promoted: {reason}. Refusing to {action} it; pass --allow-worse to {action} it "
                   "anyway (see the run's report for what to change)")
