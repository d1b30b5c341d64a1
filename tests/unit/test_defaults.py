"""Defaults tunelab chooses: the learning rate by method and model width, class weights on imbalance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.auto.defaults import choose_class_weights, choose_learning_rate, model_width
from tunelab.data.findings import Finding
from tunelab.spec import parse_spec
from tunelab.tasks.labels import LabelSpace, classifier_step

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import make_text_csv, make_tiny_bert  # noqa: E402


def _config(folder: Path, **config: object) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _spec(method: str = "full", task: str = "text-classification", **training: object):
    data = {"train": "x.jsonl"} if task == "chat" else {"train": "x.csv"}
    return parse_spec({"task": task, "model": {"method": method}, "data": data, "training": training})


@pytest.mark.parametrize("width,method,expected", [
    (384, "full", 1e-4), (768, "full", 3e-5), (1024, "full", 1.5e-5),
    (384, "lora", 1e-3), (768, "lora", 5e-4), (1024, "lora", 3e-4)])
def test_learning_rate_follows_method_and_width(tmp_path: Path, width: int, method: str, expected: float) -> None:
    base = _config(tmp_path / "m", hidden_size=width, num_hidden_layers=12)
    spec = _spec(method)
    record = choose_learning_rate(spec, base)
    assert spec.training.learning_rate == expected == spec.learning_rate == record["value"]
    assert record["source"] == "tunelab default" and f"x {width} wide" in record["why"]


def test_narrower_models_get_larger_steps_and_lora_larger_than_full(tmp_path: Path) -> None:
    rates = {}
    for width in (256, 384, 768, 1024, 4096):
        for method in ("full", "lora"):
            spec = _spec(method)
            rates[width, method] = choose_learning_rate(spec, _config(tmp_path / f"{width}", hidden_size=width))["value"]
    for method in ("full", "lora"):
        series = [rates[w, method] for w in (256, 384, 768, 1024, 4096)]
        assert series == sorted(series, reverse=True) and series[0] > series[-1]
    assert all(rates[w, "lora"] > rates[w, "full"] for w in (256, 768, 4096))


def test_a_learning_rate_in_the_spec_is_kept(tmp_path: Path) -> None:
    spec = _spec("full", learning_rate=7e-6)
    record = choose_learning_rate(spec, _config(tmp_path / "m", hidden_size=384))
    assert spec.learning_rate == 7e-6 and record["source"] == "spec"


def test_unknown_width_or_no_table_falls_back_to_the_method_default(tmp_path: Path) -> None:
    spec = _spec("lora")
    record = choose_learning_rate(spec, str(tmp_path))  # no config.json: an image model's folder, say
    assert spec.learning_rate == 2e-4 and "unknown" in record["why"]
    chat = _spec("lora", task="chat")
    record = choose_learning_rate(chat, _config(tmp_path / "llm", hidden_size=576, num_hidden_layers=30))
    assert chat.learning_rate == 2e-4 and "no width table" in record["why"]


def test_model_width_reads_composite_and_gpt_style_configs(tmp_path: Path) -> None:
    assert model_width(_config(tmp_path / "a", text_config={"hidden_size": 512, "num_hidden_layers": 4})) == (512, 4)
    assert model_width(_config(tmp_path / "b", n_embd=768, n_layer=12)) == (768, 12)


IMBALANCE = Finding("class-imbalance", "warning", "class 'a' has 90 examples, 'b' only 5 (18:1)", 1, "")


def test_class_weights_turn_on_only_when_the_doctor_reports_imbalance() -> None:
    labels = ["a"] * 90 + ["b"] * 5 + ["c"] * 5
    weights, record = choose_class_weights("auto", [IMBALANCE], labels, ["a", "b", "c"], False)
    assert record["applied"] and "imbalance" in record["why"]
    assert weights == pytest.approx([100 / (3 * 90), 100 / (3 * 5), 100 / (3 * 5)])
    assert record["weights"]["b"] == pytest.approx(6.6667, abs=1e-4)
    off, record = choose_class_weights("auto", [], labels, ["a", "b", "c"], False)
    assert off is None and not record["applied"] and "no class imbalance" in record["why"]
    off, record = choose_class_weights("none", [IMBALANCE], labels, ["a", "b", "c"], False)
    assert off is None and "none" in record["why"]
    forced, record = choose_class_weights("balanced", [], labels, ["a", "b", "c"], False)
    assert forced == pytest.approx(weights) and record["applied"]


def test_multi_label_weights_are_negatives_over_positives() -> None:
    labels = [["a"], ["a", "b"], ["a"], ["a"], []]
    weights, record = choose_class_weights("balanced", [], labels, ["a", "b"], True)
    assert weights == pytest.approx([1 / 4, 4 / 1]) and "pos_weight" in record["kind"]


class _Logits(torch.nn.Module):
    """A model that returns fixed logits and the plain cross-entropy as its own loss, like a HF classifier."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, labels: torch.Tensor, **_: object):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits, loss=torch.nn.functional.cross_entropy(self.logits, labels))


def test_the_training_step_uses_the_weights() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    space = LabelSpace(["a", "b"])
    plain, _ = classifier_step(_Logits(logits), {"labels": labels}, space)
    space.class_weights = [0.5, 3.0]
    weighted, _ = classifier_step(_Logits(logits), {"labels": labels}, space)
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor([0.5, 3.0, 3.0])
    assert float(weighted) == pytest.approx(float((per_example * w).sum() / w.sum()), rel=1e-6)
    assert float(weighted) != pytest.approx(float(plain))


@pytest.mark.integration
def test_a_run_records_its_defaults_and_weights_an_imbalanced_set(tmp_path: Path) -> None:
    """A tiny run on data with one rare class: class weights on, recorded; the chosen rate in spec.yaml."""
    import csv

    from tunelab import fine_tune

    words = make_text_csv(tmp_path / "balanced.csv", n_per_class=60)
    rows = list(csv.reader((tmp_path / "balanced.csv").open()))[1:]
    kept, rare = [], 0
    for text, label in rows:  # every sports and weather row, 6 tech ones: 60:6, the doctor's 10:1 threshold
        if label != "tech" or rare < 6:
            rare += label == "tech"
            kept.append((text, label))
    with (tmp_path / "data.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *kept])
    model = make_tiny_bert(tmp_path / "bert", words)
    spec = parse_spec({"name": "imb", "task": "text-classification", "model": {"base": str(model)},
                       "data": {"train": str(tmp_path / "data.csv"), "max_length": 16,
                                "split": {"validation": 0.25, "test": 0.25}},
                       "training": {"epochs": 1, "batch_size": 8}, "evaluation": {"baseline": False},
                       "output": {"dir": str(tmp_path / "runs")}})
    run = fine_tune(spec, force=True)
    chosen = json.loads((run.dir / "evaluation.json").read_text())["defaults"]
    assert chosen["class_weights"]["applied"] and chosen["class_weights"]["weights"]["tech"] > 1
    assert chosen["learning_rate"]["value"] == 1e-4 and "32 wide" in chosen["learning_rate"]["why"]
    assert "learning_rate: 0.0001" in (run.dir / "spec.yaml").read_text()
    for shown in ((run.dir / "report.html").read_text(), (run.dir / "model_card.md").read_text()):
        assert "learning rate 0.0001 (full on a narrow model" in shown and "class weights on: the data doctor" in shown
    assert np.isfinite(json.loads((run.dir / "history.json").read_text())["epochs"][0]["train_loss"])
