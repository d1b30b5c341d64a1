"""Image runs through the real CLI: strategies, LoRA on a ViT, predict --image, bad files stopped early."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import tunelab


def _spec(tmp_path: Path, images: dict, **overrides) -> Path:
    spec = {"task": "image-classification", "model": {"base": "tiny-cnn"},
            "data": {"train": str(images["folder"]), "image_size": 16},
            "training": {"epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": None},
            "output": {"dir": str(tmp_path / "runs")}}
    for section, values in overrides.items():
        spec[section] = {**spec.get(section, {}), **values}
    path = tmp_path / "img.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("method", ["gradual-unfreeze", "discriminative"])  # linear-probe: unit tests
def test_strategies_train_and_predict(tiny_images: dict, tmp_path: Path, method: str) -> None:
    res = tunelab("train", str(_spec(tmp_path, tiny_images, model={"method": method})), "--name", method)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / method
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["baseline_method"].startswith("nearest centroid")
    assert "majority class of the training data" in evaluation["extra_baselines"]
    assert (run / "report.html").read_text().count('id="extra-baselines"') == 1
    res = tunelab("predict", str(run), "--image", str(tiny_images["fresh"]["blue"][0]))
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(row["scores"]) <= {"red", "green", "blue"} and row["image"].endswith("000.png")
    if method != "linear-probe":  # a probe on random features is not expected to be right
        assert row["label"] == "blue"
    if method == "discriminative":  # re-scoring: held-out splits, and a new labelled folder
        res = tunelab("evaluate", str(run))
        assert res.returncode == 0, res.stderr[-2000:]
        heldout = json.loads((run / "evaluations" / "heldout.json").read_text())
        assert heldout["fine_tuned"]["test"]["n"] == heldout["baseline"]["test"]["n"] > 0
        fresh = tiny_images["fresh"]["red"][0].parents[1]
        res = tunelab("evaluate", str(run), "--data", str(fresh), "--no-baseline")
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads((run / "evaluations" / "fresh.json").read_text())["fine_tuned"]["data"]["n"] == 6


def test_lora_on_a_vit_folder(tiny_images: dict, tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path / "tiny-vit"
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    res = tunelab("train", str(_spec(tmp_path, tiny_images, model={"base": str(folder), "method": "lora"},
                                     training={"epochs": 3, "learning_rate": 1e-2})), "--name", "vit-lora")
    assert res.returncode == 0, res.stderr[-3000:]
    model_dir = tmp_path / "runs" / "vit-lora" / "model"
    from transformers import AutoModelForImageClassification

    merged = AutoModelForImageClassification.from_pretrained(model_dir)  # plain transformers, adapters merged
    assert merged.config.num_labels == 3 and not any("lora" in n for n, _ in merged.named_parameters())
    res = tunelab("predict", str(tmp_path / "runs" / "vit-lora"), "--image", str(tiny_images["fresh"]["red"][0]))
    assert res.returncode == 0, res.stderr[-2000:]


def test_lora_on_a_cnn_is_refused_clearly(tiny_images: dict, tmp_path: Path) -> None:
    res = tunelab("train", str(_spec(tmp_path, tiny_images, model={"method": "lora"})))
    assert res.returncode != 0
    assert "LoRA" in res.stderr or "lora" in res.stderr


def test_a_broken_image_stops_training_with_its_path(tiny_images: dict, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(tiny_images["folder"], folder)
    bad = folder / "red" / "broken.png"
    bad.write_text("<html>not an image</html>")
    res = tunelab("train", str(_spec(tmp_path, {"folder": folder})))
    assert res.returncode == 2
    assert "broken.png" in res.stderr and "image-not-an-image" in res.stderr
