"""Fixtures for the integration tier: a tiny random-init BERT and separable data, built once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import make_text_csv, make_tiny_bert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init two-layer Llama with a ChatML tokenizer, and chat / completion data it can learn."""
    from chat_helpers import make_tiny_llama

    root = tmp_path_factory.mktemp("llm")
    cities = ["paris", "rome", "berlin", "madrid", "lisbon", "vienna", "oslo", "dublin"]
    chat = root / "chat.jsonl"
    with chat.open("w") as fh:
        for i in range(64):
            messages = [{"role": "user", "content": f"what is the city number {i % 8}?"},
                        {"role": "assistant", "content": f"the city is {cities[i % 8]}."}]
            if i % 4 == 0:  # some multi-turn conversations with a system prompt
                messages = [{"role": "system", "content": "answer briefly."}, *messages,
                            {"role": "user", "content": "and again?"},
                            {"role": "assistant", "content": f"again {cities[i % 8]}."}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    text = root / "notes.txt"
    text.write_text("\n\n".join(f"the city number {i % 8} is {cities[i % 8]} and it is nice." for i in range(40)) + "\n")
    return {"model": make_tiny_llama(root / "tiny-llama", template="chatml"), "chat": chat, "text": text}


def make_colour_images(root: Path, n_per_class: int, seed: int) -> dict[str, list[Path]]:
    """Folder-per-class PNGs: noisy red, green and blue squares (separable by a tiny CNN in a few epochs)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for channel, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, size=(16, 16, 3))
            pixels[..., channel] += 140
            path = root / name / f"{i:03d}.png"
            Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(path)
            out.setdefault(name, []).append(path)
    return out


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    train = make_colour_images(root / "train", 30, seed=0)
    fresh = make_colour_images(root / "fresh", 2, seed=1)
    # text + image pairs: the label (sports / tech) is in the words; the colour is noise the model must ignore
    import csv

    sports, tech = ["goal match team score coach", "league cup player win"], ["laptop software chip code", "server cloud data app"]
    table = root / "pairs.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "image", "label"])
        paths = [p for ps in train.values() for p in ps]
        for i, path in enumerate(paths):
            label = "sports" if i % 2 else "tech"
            words = (sports if label == "sports" else tech)[(i // 2) % 2]
            writer.writerow([f"{words} {i}", str(path.relative_to(root)), label])
    return {"folder": root / "train", "fresh": fresh, "pairs": table}


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


@pytest.fixture(scope="session")
def serve_runs(tiny_assets: dict, tiny_llm: dict, tiny_images: dict, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Path]:
    """One quick run of each kind for the serve tests (test_serve*.py): one epoch on a small sample, as those tests
    check the serving contract, not accuracy."""
    out = str(tmp_path_factory.mktemp("serve-runs"))
    llm_generation = {"generation": {"prompts": 2, "max_new_tokens": 4}}
    specs = {
        "serve-tc": {"task": "text-classification", "model": {"base": str(tiny_assets["model"])},
                     "data": {"train": str(tiny_assets["data"]), "max_length": 32},
                     "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3}},
        "serve-chat": {"task": "chat", "model": {"base": str(tiny_llm["model"])},
                       "data": {"train": str(tiny_llm["chat"]), "max_length": 64, "limit": 24},
                       "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2}, "evaluation": llm_generation},
        "serve-completion": {"task": "completion", "model": {"base": str(tiny_llm["model"]), "method": "full"},
                             "data": {"train": str(tiny_llm["text"]), "max_length": 64, "limit": 16},
                             "training": {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "batching": "packing"},
                             "evaluation": llm_generation},
        "serve-img": {"task": "image-classification", "model": {"base": "tiny-cnn"},
                      "data": {"train": str(tiny_images["folder"]), "image_size": 16, "limit": 24},
                      "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2}},
        "serve-ti": {"task": "text-image-classification",
                     "model": {"base": str(tiny_assets["model"]), "image_base": "tiny-cnn"},
                     "data": {"train": str(tiny_images["pairs"]), "image_size": 16, "max_length": 16, "limit": 24},
                     "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3}},
    }
    from tunelab.recipes import fine_tune
    from tunelab.spec import parse_spec

    return {name: fine_tune(parse_spec({"name": name, **spec, "output": {"dir": out}})).dir
            for name, spec in specs.items()}
