"""e2e: LoRA on the bundled SmolLM2-135M-Instruct with a few dozen FAQ pairs lowers held-out loss below
the base model's, and the merged export reproduces the fine-tuned answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def _tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=1200)


def test_smollm2_faq_lora_beats_base_and_exports(tmp_path: Path) -> None:
    spec = {"name": "faq-e2e", "task": "chat", "model": {"base": "SmolLM2-135M-Instruct"},
            "data": {"train": "construction-faq", "limit": 48, "split": {"validation": 0.125, "test": 0.125},
                     "max_length": 192},
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-4},
            "evaluation": {"generation": {"prompts": 4, "max_new_tokens": 24}}, "output": {"dir": str(tmp_path)}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    preview = _tunelab("data", "preview", str(path), "-n", "1", "--no-color")
    assert preview.returncode == 0, preview.stderr[-2000:]
    assert "<|im_start|>assistant" in preview.stdout and "⟦" in preview.stdout

    result = _tunelab("train", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "faq-e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    base, tuned = metrics["baseline"]["test"], metrics["fine_tuned"]["test"]
    assert base["n"] == tuned["n"] == 6
    assert tuned["loss"] < base["loss"], (base, tuned)
    assert metrics["fine_tuned"]["validation"]["loss"] < metrics["baseline"]["validation"]["loss"]

    exported = _tunelab("export", str(run), "--merge")
    assert exported.returncode == 0, exported.stderr[-3000:]
    parity = json.loads((run / "export" / "merged" / "parity.json").read_text())
    assert parity["mismatches"] == 0 and parity["prompts"] == 4
