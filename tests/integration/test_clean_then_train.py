"""The doctor's advice leads somewhere: `train` stops on near-identical leakage, `data clean` removes every leaked
row, and `train` on the spec `data clean` wrote no longer stops (issue 14, point 5)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.data.clean import CleanOptions, clean, write_clean_spec

from conftest import tunelab
from helpers import leaky_set, make_tiny_bert


def test_train_stops_on_leakage_then_trains_on_the_cleaned_data(tmp_path: Path) -> None:
    files = leaky_set(tmp_path / "data")
    model = make_tiny_bert(tmp_path / "tiny-bert", [f"w{i}" for i in range(400)] + ["changed"])
    spec = tmp_path / "data" / "leaky.yaml"
    spec.write_text(yaml.safe_dump({
        "task": "text-classification", "model": {"base": str(model)},
        "data": {"train": "train.csv", "validation": "validation.csv", "test": "test.csv", "max_length": 48},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "output": {"dir": str(tmp_path / "runs")}}))

    stopped = tunelab("train", str(spec))
    assert stopped.returncode != 0 and "leakage" in stopped.stderr  # the exit code is run.exitcodes' business
    report = json.loads((tmp_path / "runs" / "leaky" / "data_report.json").read_text())
    [leak] = [f for f in report["findings"] if f["check"] == "leakage"]
    assert len(leak["locations"]) == 79  # every row, not the first five

    cleaned = clean({k: str(v) for k, v in files.items()}, tmp_path / "clean", CleanOptions())  # what `data clean` runs
    assert cleaned.dropped == 79
    trained = tunelab("train", str(write_clean_spec(spec, cleaned.outputs, tmp_path / "clean")))
    assert trained.returncode in (0, 3), trained.stderr[-3000:]  # 3: trained, but not promoted over the baseline
    report = json.loads((tmp_path / "runs" / "leaky-clean" / "data_report.json").read_text())
    assert report["summary"]["error"] == 0 and report["sizes"]["validation"] == 21
