"""model.method setfit: which specs may ask for it, which bases it refuses, and the exact conversion of SetFit's
logistic head into the torch Linear the saved model holds (the training, the refusal by `fine_tune` and the
differentiable head, which need the setfit and recipe imports: tests/integration/test_setfit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunelab.spec import SpecError, parse_spec

TEXT = {"task": "text-classification", "data": {"train": "x.csv"}}


def _folder(path: Path, sentence_encoder: bool) -> Path:
    """A model folder as catalog.resolve accepts it; with modules.json it is a sentence-transformers folder."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    if sentence_encoder:
        (path / "modules.json").write_text("[]")
    return path


def test_setfit_spec_defaults_and_keys() -> None:
    spec = parse_spec({**TEXT, "model": {"method": "setfit", "setfit": {"iterations": 5, "head": "differentiable"}}})
    assert spec.model.setfit.iterations == 5 and spec.model.setfit.head == "differentiable"
    assert spec.model.setfit.body_epochs == 1 and spec.learning_rate == 2e-5  # SetFit's own body learning rate
    with pytest.raises(SpecError, match="iterations"):  # a typo names the closest key
        parse_spec({**TEXT, "model": {"method": "setfit", "setfit": {"iteration": 5}}})
    with pytest.raises(SpecError, match="head"):
        parse_spec({**TEXT, "model": {"method": "setfit", "setfit": {"head": "svm"}}})


@pytest.mark.parametrize("task, data", [("image-classification", {"train": "digits"}),
                                        ("text-image-classification", {"train": "pairs.csv"}),
                                        ("chat", {"train": "chat.jsonl"})])
def test_other_tasks_refuse_setfit(task: str, data: dict) -> None:
    with pytest.raises(SpecError, match=f"model.method 'setfit' does not apply to {task}"):
        parse_spec({"task": task, "model": {"method": "setfit"}, "data": data})


def test_setfit_refuses_multi_label_data() -> None:
    with pytest.raises(SpecError, match="single-label"):
        parse_spec({**TEXT, "model": {"method": "setfit"}, "data": {"train": "x.csv", "multi_label": True}})


def test_sentence_encoder_bases_pass_the_check(tmp_path: Path) -> None:
    from tunelab.train.methods import for_spec

    encoder = _folder(tmp_path / "encoder", sentence_encoder=True)
    spec = parse_spec({**TEXT, "model": {"base": str(encoder), "method": "setfit"}})
    method = for_spec(spec)
    assert method.name == "setfit"
    method.check(spec, str(encoder))  # no error
    assert method.trainer == "setfit" and for_spec(parse_spec(TEXT)).trainer == "loop"  # others: tunelab's loop


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _linear_probabilities(head, n_labels: int, x: np.ndarray) -> np.ndarray:
    from tunelab.fewshot.setfit import linear_head

    weight, bias = linear_head(head, n_labels)
    return _softmax(x @ weight.numpy().T + bias.numpy())


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_head_converts_exactly(n_classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = rng.integers(0, n_classes, size=60)
    head = LogisticRegression().fit(x, y)
    assert np.allclose(_linear_probabilities(head, n_classes, x), head.predict_proba(x), atol=1e-12)


def test_logistic_head_never_predicts_a_label_it_never_saw() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    y = rng.choice([0, 2], size=40)  # label 1 has no training example
    head = LogisticRegression().fit(x, y)
    probs = _linear_probabilities(head, 3, x)
    assert np.allclose(probs[:, [0, 2]], head.predict_proba(x), atol=1e-12) and probs[:, 1].max() < 1e-100
