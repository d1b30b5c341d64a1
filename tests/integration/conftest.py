"""Fixtures for the integration tier: a tiny random-init BERT and separable data, built once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import make_text_csv, make_tiny_bert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    words = make_text_csv(root / "data.csv", n_per_class=40, seed=0)
    make_text_csv(root / "fresh.csv", n_per_class=10, seed=1)
    return {"model": make_tiny_bert(root / "tiny-bert", words), "data": root / "data.csv", "fresh": root / "fresh.csv"}


def write_spec(path: Path, assets: dict[str, Path], **overrides: dict) -> Path:
    spec = {"task": "text-classification", "model": {"base": str(assets["model"])},
            "data": {"train": str(assets["data"]), "max_length": 32},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3, "early_stopping_patience": None},
            "output": {"dir": str(path.parent / "runs")}}
    for section, values in overrides.items():
        spec.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(spec))
    return path


def tunelab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=timeout)
