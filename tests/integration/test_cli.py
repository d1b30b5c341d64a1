"""The real CLI on a tiny random-init BERT: artifacts, reload with plain transformers, resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from tunelab.evaluate.gate import NOT_PROMOTED_EXIT

from conftest import tunelab, write_spec


@pytest.fixture(scope="module")
def full_run(tiny_assets: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = write_spec(tmp_path_factory.mktemp("full") / "full.yaml", tiny_assets)
    result = tunelab("train", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline vs fine-tuned" in result.stdout
    return spec.parent / "runs" / "full"


def test_run_directory_contract(full_run: Path, tiny_assets: dict) -> None:
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "spec.yaml",
                 "metrics.json", "report.html", "model_card.md", "history.json", "data_report.json"):
        assert (full_run / name).is_file(), name
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert set(metrics) == {"baseline", "fine_tuned"}
    for kind in metrics.values():
        assert set(kind) == {"validation", "test"}
        for split in kind.values():
            assert {"accuracy", "macro_f1", "n"} <= set(split)
    assert metrics["baseline"]["test"]["n"] == metrics["fine_tuned"]["test"]["n"] == 12
    # the data is separable: fine-tuning must beat the majority-class baseline clearly
    assert metrics["fine_tuned"]["test"]["macro_f1"] > metrics["baseline"]["test"]["macro_f1"] + 0.3
    config = json.loads((full_run / "model/config.json").read_text())
    assert config["id2label"] == {"0": "sports", "1": "tech", "2": "weather"}
    card = (full_run / "model_card.md").read_text()
    import hashlib
    assert hashlib.sha256(tiny_assets["data"].read_bytes()).hexdigest() in card
    assert "learning rate 0.005" in card and "| test | 12 |" in card
    report = (full_run / "report.html").read_text()
    for section in ("Baseline vs fine-tuned", "Learning curves", "confusion matrix", "per class", 'id="per-class"'):
        assert section in report
    assert report.count("data:image/png;base64") == 2
    energy = json.loads((full_run / "run.json").read_text())["energy"]  # the energy meter's record
    assert {"energy_kwh", "co2_kg", "grid_intensity_g_per_kwh", "method", "source", "duration_s", "cpu_kwh",
            "ram_kwh"} <= set(energy)
    assert energy["method"] in ("measured", "estimate") and energy["energy_kwh"] > 0
    assert energy["co2_kg"] == energy["energy_kwh"] * energy["grid_intensity_g_per_kwh"] / 1000
    assert 'id="energy"' in report and "energy and CO2: " in card


def test_loss_falls(full_run: Path) -> None:
    history = json.loads((full_run / "history.json").read_text())
    epochs = history["epochs"]
    assert len(epochs) == 6
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]


def test_model_reloads_with_plain_transformers_and_predicts_the_same(full_run: Path, tiny_assets: dict) -> None:
    texts = ["goal match team score coach today", "rain storm and wind the snow cloud", "laptop software chip code server"]
    clf = pipeline("text-classification", model=str(full_run / "model"))
    plain = clf(texts)
    result = tunelab("predict", str(full_run), *sum((["--text", t] for t in texts), []))
    assert result.returncode == 0, result.stderr
    ours = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["label"] for p in plain] == [o["label"] for o in ours] == ["sports", "weather", "tech"]
    for p, o in zip(plain, ours):
        assert o["score"] == pytest.approx(p["score"], abs=1e-5)


def test_predict_from_file_and_evaluate_on_new_data(full_run: Path, tiny_assets: dict, tmp_path: Path) -> None:
    lines = tmp_path / "texts.txt"
    lines.write_text("goal match team score the coach\n\nsnow forecast rain the wind cloud\n")
    result = tunelab("predict", str(full_run), "--file", str(lines))
    assert [json.loads(x)["label"] for x in result.stdout.splitlines()] == ["sports", "weather"]
    result = tunelab("evaluate", str(full_run), "--data", str(tiny_assets["fresh"]))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((full_run / "evaluations" / "fresh.json").read_text())
    assert saved["fine_tuned"]["data"]["n"] == saved["baseline"]["data"]["n"] == 30
    assert saved["fine_tuned"]["data"]["macro_f1"] > 0.8
    heldout = tunelab("evaluate", str(full_run))
    assert heldout.returncode == 0, heldout.stderr[-2000:]
    again = json.loads((full_run / "evaluations" / "heldout.json").read_text())
    original = json.loads((full_run / "metrics.json").read_text())
    assert again["fine_tuned"]["test"]["macro_f1"] == pytest.approx(original["fine_tuned"]["test"]["macro_f1"])


def test_existing_run_is_not_overwritten(full_run: Path) -> None:
    result = tunelab("train", str(full_run.parent.parent / "full.yaml"))
    assert result.returncode == 2
    assert "already exists; pass --overwrite" in result.stderr


def test_lora_run_keeps_adapter_and_merged_model(tiny_assets: dict, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "lora.yaml", tiny_assets, model={"method": "lora", "lora": {"r": 4, "alpha": 8}},
                      training={"epochs": 2, "learning_rate": 1e-2})
    result = tunelab("train", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "lora"
    assert (run / "adapter" / "adapter_config.json").is_file()
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(tiny_assets["model"], num_labels=3)
    with_adapter = PeftModel.from_pretrained(base, run / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    batch = AutoTokenizer.from_pretrained(run / "model")(["goal team", "rain wind"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(with_adapter(**batch).logits, merged(**batch).logits, atol=1e-5)


def test_data_errors_stop_training_with_file_and_row(tiny_assets: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(tiny_assets["data"].read_text() + ",sports\n")
    spec = write_spec(tmp_path / "bad.yaml", tiny_assets, data={"train": str(bad)}, training={"epochs": 1})
    result = tunelab("train", str(spec))
    assert result.returncode == 2
    assert "empty-text" in result.stderr and f"{bad}:122" in result.stderr.replace("\n", "")
    forced = tunelab("train", str(spec), "--force", "--overwrite")
    # --force trains on: the run finishes (one epoch may not beat the baseline: exit 3, not-promoted)
    assert forced.returncode in (0, NOT_PROMOTED_EXIT), forced.stderr[-2000:]
    report = json.loads((tmp_path / "runs" / "bad" / "data_report.json").read_text())
    assert report["forced"] is True


def test_killed_run_resumes(tiny_assets: dict, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "long.yaml", tiny_assets, training={"epochs": 12})
    run = tmp_path / "runs" / "long"
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "train", str(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = run / "checkpoints" / "LATEST"
        if latest.is_file() and latest.read_text().strip() >= "step-0000024":  # 12 steps/epoch: epoch 2 done
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip() / "state.json").read_text())
    done = state["epoch"]
    assert 2 <= done < 12
    result = tunelab("train", str(spec), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step-" in result.stdout + result.stderr
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert history[:done] == state["history"]
    assert json.loads((run / "run.json").read_text())["resumed"] is True


def test_resume_refuses_changed_spec(tiny_assets: dict, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "r.yaml", tiny_assets, training={"epochs": 1})
    assert tunelab("train", str(spec)).returncode in (0, NOT_PROMOTED_EXIT)  # one epoch: promoted or not, it ran
    write_spec(tmp_path / "r.yaml", tiny_assets, training={"epochs": 1, "learning_rate": 0.01})
    result = tunelab("train", str(spec), "--resume")
    assert result.returncode == 2 and "the spec changed" in result.stderr


def test_init_writes_a_spec_that_trains(tmp_path: Path) -> None:
    result = tunelab("init", "text-classification", "-o", str(tmp_path / "new.yaml"))
    assert result.returncode == 0
    from tunelab.spec import load_spec

    assert load_spec(tmp_path / "new.yaml").task == "text-classification"


def test_a_run_that_does_not_beat_its_baseline_is_not_promoted_and_not_served(tiny_assets: dict, tmp_path: Path) -> None:
    """The gate end to end: a learning rate too small to move the model leaves it at (or below) the baseline,
    so train exits 3, run.json says not-promoted with the diagnosis and the search commands, and serve and
    export refuse the run unless told --allow-worse."""
    spec = write_spec(tmp_path / "flat.yaml", tiny_assets, training={"epochs": 2, "learning_rate": 1e-9})
    result = tunelab("train", str(spec))
    assert result.returncode == NOT_PROMOTED_EXIT, result.stderr[-2000:]
    assert "not promoted" in result.stderr and "does NOT beat" in result.stderr
    assert f"tunelab tune {spec}" in result.stderr and f"tunelab auto {spec}" in result.stderr
    run = tmp_path / "runs" / "flat"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "not-promoted" and not status["gate"]["promoted"] and status["gate"]["diagnosis"]
    assert "does NOT beat" in (run / "report.html").read_text()
    refused = tunelab("export", str(run), "--onnx", "--out", str(tmp_path / "onnx"))
    assert refused.returncode == 2 and "--allow-worse" in refused.stderr and not (tmp_path / "onnx").exists()
    from tunelab.run import RunError
    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    with pytest.raises(RunError, match="not promoted"):
        create_app([run], ServeSettings(db=f"sqlite:///{tmp_path / 'r.db'}"))
    assert create_app([run], ServeSettings(db=f"sqlite:///{tmp_path / 'r.db'}", allow_worse=True)) is not None
    allowed = tunelab("export", str(run), "--onnx", "--allow-worse", "--out", str(tmp_path / "onnx"))
    assert allowed.returncode == 0, allowed.stderr[-2000:]
