"""One row per task: train -> save -> load -> predict on a tiny random-init model, through the Python API.

Adding a task = one module + one registry line + one row in CASES below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tunelab.evaluate_run import predict_texts
from tunelab.recipe import fine_tune
from tunelab.spec import parse_spec
from tunelab.tasks import TASKS


def text_classification_case(assets: dict, tmp_path: Path) -> tuple[dict[str, Any], list[str], Callable]:
    spec = {"name": "tc", "task": "text-classification", "model": {"base": str(assets["model"])},
            "data": {"train": str(assets["data"]), "max_length": 32},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3}, "output": {"dir": str(tmp_path)}}
    inputs = ["goal match team score coach", "laptop software chip code server"]
    return spec, inputs, lambda preds: [p["label"] for p in preds] == ["sports", "tech"]


def multi_label_case(assets: dict, tmp_path: Path) -> tuple[dict[str, Any], list[str], Callable]:
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
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3}, "output": {"dir": str(tmp_path)}}
    return spec, ["goal match team score coach"], lambda preds: "sports" in preds[0]["labels"]


CASES = {"text-classification": text_classification_case, "text-classification (multi-label)": multi_label_case}


def test_every_registered_task_has_a_case() -> None:
    assert {c.split(" (")[0] for c in CASES} == set(TASKS)


@pytest.mark.parametrize("case", list(CASES))
def test_train_save_load_predict(case: str, tiny_assets: dict, tmp_path: Path) -> None:
    raw, inputs, check = CASES[case](tiny_assets, tmp_path)
    run = fine_tune(parse_spec(raw))
    assert (run.dir / "model" / "config.json").is_file()
    ft, base = run.metrics["fine_tuned"]["test"], run.metrics["baseline"]["test"]
    assert ft["n"] == base["n"] > 0
    assert ft["macro_f1"] > base["macro_f1"]
    predictions = predict_texts(run.dir, inputs)
    assert check(predictions), predictions
