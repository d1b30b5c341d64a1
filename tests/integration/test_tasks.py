"""One row per task: train -> save -> load -> predict on a tiny random-init model, through the Python API.

Adding a task = one module + one registry line + one row in CASES below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tunelab.evaluate.predict import predict_texts
from tunelab.recipes import fine_tune
from tunelab.spec import parse_spec
from tunelab.tasks import TASKS


def _classifier_check(inputs: list[str], expected: Callable) -> Callable:
    def check(run: Any) -> None:
        assert (run.dir / "model" / "config.json").is_file()
        ft, base = run.metrics["fine_tuned"]["test"], run.metrics["baseline"]["test"]
        assert ft["n"] == base["n"] > 0
        assert ft["macro_f1"] > base["macro_f1"]
        predictions = predict_texts(run.dir, inputs)
        assert expected(predictions), predictions

    return check


def text_classification_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    spec = {"name": "tc", "task": "text-classification", "model": {"base": str(assets["model"])},
            "data": {"train": str(assets["data"]), "max_length": 32},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3}, "output": {"dir": str(tmp_path)}}
    inputs = ["goal match team score coach", "laptop software chip code server"]
    return spec, _classifier_check(inputs, lambda preds: [p["label"] for p in preds] == ["sports", "tech"])


def multi_label_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    rows = [json.loads(line) for line in []]
    import csv

    with open(assets["data"]) as fh:
        for r in csv.DictReader(fh):
            labels = [r["label"]] + (["has-the"] if " the " in f" {r['text']} " else [])
            rows.append({"text": r["text"], "label": labels})
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "ml", "task": "text-classification", "model": {"base": str(assets["model"])},
            "data": {"train": str(path), "max_length": 32, "multi_label": True},
            "training": {"epochs": 10, "batch_size": 8, "learning_rate": 5e-3}, "output": {"dir": str(tmp_path)}}
    return spec, _classifier_check(["goal match team score coach"], lambda preds: "sports" in preds[0]["labels"])


def _generative_check(prompt: str, expected_word: str) -> Callable:
    """Beats the base on held-out loss; the merged export reproduces the recorded answers; generate works."""

    def check(run: Any) -> None:
        from tunelab.export.merge import export_merged
        from tunelab.lm.use import generate

        assert (run.dir / "adapter" / "adapter_config.json").is_file()
        ft, base = run.metrics["fine_tuned"]["test"], run.metrics["baseline"]["test"]
        assert ft["n"] == base["n"] > 0 and ft["loss"] < base["loss"]
        parity = export_merged(run.dir)
        assert parity["mismatches"] == 0 and parity["prompts"] > 0
        answers = generate(run.dir, [prompt], max_new_tokens=12)
        assert expected_word in answers[0]["answer"], answers

    return check


def chat_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    spec = {"name": "chat", "task": "chat", "model": {"base": str(llm["model"])},
            "data": {"train": str(llm["chat"]), "max_length": 64},
            "training": {"epochs": 4, "batch_size": 8, "learning_rate": 1e-2},
            "evaluation": {"generation": {"prompts": 6, "max_new_tokens": 10}}, "output": {"dir": str(tmp_path)}}
    return spec, _generative_check("what is the city number 3?", "city")


def completion_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    spec = {"name": "completion", "task": "completion", "model": {"base": str(llm["model"]), "method": "full"},
            "data": {"train": str(llm["text"]), "max_length": 64},
            "training": {"epochs": 10, "batch_size": 4, "learning_rate": 5e-3, "batching": "packing",
                         "early_stopping_patience": None},
            "evaluation": {"generation": {"prompts": 4, "max_new_tokens": 8}}, "output": {"dir": str(tmp_path)}}

    def check(run: Any) -> None:
        from tunelab.export.merge import export_merged
        from tunelab.lm.use import generate

        assert (run.dir / "model" / "config.json").is_file()  # full fine-tuning: a plain folder already
        ft, base = run.metrics["fine_tuned"]["test"], run.metrics["baseline"]["test"]
        assert ft["loss"] < base["loss"]
        assert export_merged(run.dir)["mismatches"] == 0
        answer = generate(run.dir, ["the city number 2 is"], max_new_tokens=8)[0]["answer"]
        corpus_words = {"the", "city", "number", "is", "and", "it", "nice", *CITIES}
        assert set(answer.replace(".", " ").split()) & corpus_words, answer  # random init gives byte soup

    return spec, check


def image_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    spec = {"name": "img", "task": "image-classification", "model": {"base": "tiny-cnn"},
            "data": {"train": str(images["folder"]), "image_size": 16},
            "training": {"epochs": 8, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": None},
            "output": {"dir": str(tmp_path)}}

    def check(run: Any) -> None:
        from tunelab.evaluate.predict import predict_inputs
        from tunelab.vision.models import load_image_model

        model_dir = run.dir / "model"
        assert (model_dir / "model.safetensors").is_file() and (model_dir / "preprocessor_config.json").is_file()
        assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
        ft = run.metrics["fine_tuned"]["test"]
        assert ft["accuracy"] >= 0.85, ft
        assert load_image_model(model_dir).num_labels == 3
        paths = [str(p) for name in ("red", "green", "blue") for p in images["fresh"][name]]
        predictions = predict_inputs(run.dir, images=paths)
        assert [p["label"] for p in predictions] == ["red", "red", "green", "green", "blue", "blue"], predictions
        assert predictions[0]["image"] == paths[0] and 0 < predictions[0]["score"] <= 1

    return spec, check


def text_image_case(assets: dict, llm: dict, images: dict, tmp_path: Path) -> tuple[dict[str, Any], Callable]:
    spec = {"name": "ti", "task": "text-image-classification",
            "model": {"base": str(assets["model"]), "image_base": "tiny-cnn"},
            "data": {"train": str(images["pairs"]), "image_size": 16, "max_length": 16},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3, "early_stopping_patience": None},
            "output": {"dir": str(tmp_path)}}

    def check(run: Any) -> None:
        from tunelab.evaluate.predict import predict_inputs

        ft = run.metrics["fine_tuned"]["test"]
        assert ft["accuracy"] >= 0.8, ft
        report = (run.dir / "report.html").read_text()
        assert 'id="modalities"' in report and "text only" in report and "image only" in report
        red = str(images["fresh"]["red"][0])
        rows = predict_inputs(run.dir, texts=["goal match team score coach 7", "laptop software chip code 8"],
                              images=[red, red])
        assert [r["label"] for r in rows] == ["sports", "tech"], rows

    return spec, check


CITIES = ("paris", "rome", "berlin", "madrid", "lisbon", "vienna", "oslo", "dublin")
CASES = {"text-classification": text_classification_case, "text-classification (multi-label)": multi_label_case,
         "chat": chat_case, "completion": completion_case, "image-classification": image_case,
         "text-image-classification": text_image_case}


def test_every_registered_task_has_a_case() -> None:
    assert {c.split(" (")[0] for c in CASES} == set(TASKS)


@pytest.mark.parametrize("case", list(CASES))
def test_train_save_load_predict(case: str, tiny_assets: dict, tiny_llm: dict, tiny_images: dict,
                                 tmp_path: Path) -> None:
    raw, check = CASES[case](tiny_assets, tiny_llm, tiny_images, tmp_path)
    run = fine_tune(parse_spec(raw))
    check(run)
