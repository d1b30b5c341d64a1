"""e2e: the bundled MiniLM on a few dozen BBC News articles beats its own zero-shot baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from transformers import pipeline


def test_minilm_on_bbc_beats_zero_shot_baseline(tmp_path: Path) -> None:
    spec = {"name": "bbc-e2e", "task": "text-classification", "model": {"base": "all-MiniLM-L6-v2"},
            "data": {"train": "bbc-news", "limit": 90, "split": {"validation": 0.2, "test": 0.33}, "max_length": 64},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 1e-4, "early_stopping_patience": 3},
            "output": {"dir": str(tmp_path)}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(path)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "bbc-e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    base, tuned = metrics["baseline"]["test"], metrics["fine_tuned"]["test"]
    assert base["n"] == tuned["n"] == 30
    assert 0.3 < base["macro_f1"] < 0.95  # the zero-shot baseline is real, not a constant
    assert tuned["macro_f1"] > base["macro_f1"]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["baseline_method"].startswith("zero-shot")
    clf = pipeline("text-classification", model=str(run / "model"))
    assert clf("The striker scored twice as the club won the league title.")[0]["label"] == "sport"
