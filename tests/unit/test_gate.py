"""The promotion gate: judge, its paired bootstrap interval, the diagnosis, and the refusal to serve/export."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.evaluate import gate
from tunelab.evaluate.metrics import metric_function
from tunelab.run import RunError


def test_promoted_only_when_strictly_better_in_the_metrics_direction() -> None:
    assert gate.judge({"macro_f1": 0.5, "n": 10}, {"macro_f1": 0.6, "n": 10}, "macro_f1", False).promoted
    tie = gate.judge({"macro_f1": 0.9, "n": 10}, {"macro_f1": 0.9, "n": 10}, "macro_f1", False)
    assert not tie.promoted and tie.gain == 0.0
    worse = gate.judge({"macro_f1": 0.7, "n": 10}, {"macro_f1": 0.4, "n": 10}, "macro_f1", False)
    assert not worse.promoted and worse.gain == pytest.approx(-0.3)
    assert "does NOT beat" in worse.reason and "0.7000 -> 0.4000" in worse.reason
    assert gate.judge({"loss": 2.0, "n": 5}, {"loss": 1.5, "n": 5}, "loss", True).promoted
    assert not gate.judge({"loss": 2.0, "n": 5}, {"loss": 2.5, "n": 5}, "loss", True).promoted
    assert not gate.judge({"loss": 2.0, "n": 5}, {"loss": float("nan"), "n": 5}, "loss", True).promoted


def test_without_a_baseline_the_run_is_promoted_and_says_why() -> None:
    verdict = gate.judge(None, {"macro_f1": 0.3, "n": 10}, "macro_f1", False)
    assert verdict.promoted and verdict.baseline is None and "no baseline" in verdict.reason


def test_paired_bootstrap_interval_brackets_the_gain() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    base = np.where(rng.random(400) < 0.6, truth, 1 - truth)  # about 60% right
    tuned = np.where(rng.random(400) < 0.9, truth, 1 - truth)  # about 90% right
    score = metric_function("accuracy")
    verdict = gate.judge({"accuracy": score(truth, base), "n": 400}, {"accuracy": score(truth, tuned), "n": 400},
                         "accuracy", False, paired=(truth, base, tuned, score))
    low, high = verdict.interval
    assert verdict.promoted and 0 < low < verdict.gain < high
    same = gate.bootstrap_gain(truth, base, base.copy(), score)
    assert same == [0.0, 0.0]


def test_a_small_gain_within_noise_is_flagged() -> None:
    truth = np.array([0, 1] * 5)
    base = truth.copy()
    base[0] = 1 - base[0]  # 9 of 10 right
    tuned = truth.copy()  # 10 of 10
    score = metric_function("macro_f1")
    verdict = gate.judge({"macro_f1": score(truth, base), "n": 10}, {"macro_f1": score(truth, tuned), "n": 10},
                         "macro_f1", False, paired=(truth, base, tuned, score))
    assert verdict.promoted and verdict.interval[0] <= 0 and "chance" in verdict.interval_note


def test_diagnosis_names_the_cause_and_the_setting() -> None:
    still_improving = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_macro_f1": 0.2},
                       {"epoch": 2, "train_loss": 0.9, "val_loss": 0.95, "val_macro_f1": 0.3}]
    kinds = {f["kind"]: f for f in gate.diagnose(still_improving, "macro_f1", False, 2e-5, 2)}
    assert "under-trained" in kinds and "training.epochs: 4" in kinds["under-trained"]["advice"]
    diverged = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.7, "val_macro_f1": 0.3},
                {"epoch": 2, "train_loss": float("nan"), "val_loss": float("nan"), "val_macro_f1": 0.3}]
    first = gate.diagnose(diverged, "macro_f1", False, 1e-3, 2)[0]
    assert first["kind"] == "diverged" and "0.0001" in first["advice"]
    overfit = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.8, "train_macro_f1": 0.99, "val_macro_f1": 0.5},
               {"epoch": 2, "train_loss": 0.2, "val_loss": 0.9, "train_macro_f1": 1.0, "val_macro_f1": 0.45}]
    assert "overfitting" in {f["kind"] for f in gate.diagnose(overfit, "macro_f1", False, 2e-5, 2)}
    collapsed = gate.diagnose(overfit, "macro_f1", False, 2e-5, 2, ["a"] * 50 + ["b"] * 3, np.zeros(20, dtype=int))
    kinds = [f["kind"] for f in collapsed]
    assert "collapsed" in kinds and "too-few-examples" in kinds
    assert gate.diagnose([], "loss", True, 2e-4, 1)[0]["kind"] == "unclear"


def test_serve_and_export_refuse_a_run_that_was_not_promoted(tmp_path) -> None:
    status = {"status": "not-promoted", "gate": {"reason": "the fine-tuned model does NOT beat the untuned baseline"}}
    with pytest.raises(RunError, match="not promoted.*--allow-worse"):
        gate.allow(status, tmp_path, False, "serve")
    gate.allow(status, tmp_path, True, "serve")  # --allow-worse
    gate.allow({"status": "completed"}, tmp_path, False, "export")
    gate.allow({"status": "unknown"}, tmp_path, False, "export")  # runs from before the gate


def test_metric_functions_agree_with_the_full_metrics() -> None:
    from tunelab.evaluate.metrics import classification_metrics

    rng = np.random.default_rng(1)
    truth, pred = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    full = classification_metrics(truth, pred, ["a", "b", "c"])
    for name in ("accuracy", "macro_f1", "micro_f1"):
        assert math.isclose(metric_function(name)(truth, pred), full[name])


def test_a_tie_at_the_ceiling_is_promoted_but_any_other_tie_is_not() -> None:
    perfect = gate.judge({"macro_f1": 1.0}, {"macro_f1": 1.0, "n": 9}, "macro_f1", False)
    assert perfect.promoted and "both perfect" in perfect.summary() and "cannot separate" in perfect.interval_note
    tie = gate.judge({"macro_f1": 0.8}, {"macro_f1": 0.8, "n": 9}, "macro_f1", False)
    assert not tie.promoted and "does NOT beat" in tie.summary()
    loss_tie = gate.judge({"loss": 0.0}, {"loss": 0.0, "n": 9}, "loss", True)
    assert not loss_tie.promoted


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "micro_f1"])
def test_resampled_scores_equal_scikit_learn_on_every_resample(metric: str) -> None:
    """The gate's vectorised bootstrap scores each resample exactly as scikit-learn does, including resamples
    where a class is missing from the truth or from the predictions (macro-F1 over the labels present)."""
    rng = np.random.default_rng(3)
    truth, pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    truth[:3] = 3  # a rare class that many resamples miss
    pred[pred == 3] = 2
    idx = rng.integers(0, 30, (200, 30))
    score = metric_function(metric)
    expected = np.array([score(truth[i], pred[i]) for i in idx])
    assert np.allclose(score.resampled(truth, pred, idx), expected, atol=1e-12)
