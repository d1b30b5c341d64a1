import numpy as np
import pytest

from tunelab.evaluate.metrics import classification_metrics, compare, overfitting_warning


def test_classification_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: a 0.5, b 0.8, c 0.667
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_class_absent_from_predictions_counts_as_zero() -> None:
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 0, 0]), ["a", "b", "c"])
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0 + 0) / 3)


def test_multi_label_metrics() -> None:
    y = np.array([[1, 0], [1, 1], [0, 1]])
    p = np.array([[1, 0], [1, 0], [0, 1]])
    m = classification_metrics(y, p, ["a", "b"], multi_label=True)
    assert m["accuracy"] == pytest.approx(2 / 3)  # subset accuracy
    assert m["per_class"]["b"]["recall"] == 0.5
    assert "confusion_matrix" not in m


def test_compare_requires_same_examples() -> None:
    c = compare({"macro_f1": 0.5, "n": 10}, {"macro_f1": 0.8, "n": 10}, "macro_f1")
    assert c["better"] and c["gain"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="not comparable"):
        compare({"macro_f1": 0.5, "n": 9}, {"macro_f1": 0.8, "n": 10}, "macro_f1")


def _h(epoch: int, tl: float, vl: float, vf: float, tf: float) -> dict:
    return {"epoch": epoch, "train_loss": tl, "val_loss": vl, "val_macro_f1": vf, "train_macro_f1": tf}


def test_overfitting_warning_fires_only_on_divergence() -> None:
    diverging = [_h(1, 1.0, 0.5, 0.8, 0.6), _h(2, 0.6, 0.6, 0.78, 0.8), _h(3, 0.3, 0.8, 0.75, 0.95)]
    assert "overfit" in overfitting_warning(diverging, "macro_f1")
    healthy = [_h(1, 1.0, 0.9, 0.6, 0.5), _h(2, 0.6, 0.6, 0.7, 0.7), _h(3, 0.4, 0.5, 0.8, 0.8)]
    assert overfitting_warning(healthy, "macro_f1") is None
    assert overfitting_warning(diverging[:2], "macro_f1") is None
