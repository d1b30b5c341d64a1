"""Exact resume, proved at zero tolerance: SIGKILL runs at seeded random points (after optimizer steps, inside a
checkpoint write, between a checkpoint and its pointer), resume each, and require bitwise identical weights,
metrics and history against the run that was never stopped. Also SIGTERM, and `--resume` before any checkpoint.

The kills are real SIGKILLs of the real `tunelab train` process, placed by tunelab.train.faults (TUNELAB_FAULT)
so that the test knows which moments it covered.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_spec

pytestmark = pytest.mark.integration

TIMING = ("train_seconds", "val_seconds")  # wall-clock fields: the only ones allowed to differ


def _train(spec: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TUNELAB_FAULT", None)
    if fault:
        env["TUNELAB_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(spec), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _outcome(run: Path) -> dict:
    """What must match bit for bit: every weights file outside checkpoints/, metrics, and the history
    (without its wall-clock fields)."""
    weights = {}
    for f in sorted(run.rglob("*.safetensors")):
        rel = f.relative_to(run)
        if rel.parts[0] != "checkpoints":
            weights[str(rel)] = load_file(str(f))
    history = json.loads((run / "history.json").read_text())
    for row in history["epochs"]:
        for k in TIMING:
            row.pop(k, None)
    return {"weights": weights, "metrics": json.loads((run / "metrics.json").read_text()), "history": history}


def _assert_identical(got: dict, want: dict, what: str) -> None:
    assert got["weights"].keys() == want["weights"].keys(), what
    for name, tensors in want["weights"].items():
        assert tensors.keys() == got["weights"][name].keys(), f"{what}: {name}"
        for key, t in tensors.items():
            other = got["weights"][name][key]
            assert t.dtype == other.dtype and t.shape == other.shape and _bits(t).equal(_bits(other)), \
                f"{what}: {name}:{key} differs (max |diff| {(t.float() - other.float()).abs().max().item():.3g})"
    assert got["metrics"] == want["metrics"], what
    assert got["history"] == want["history"], what


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal bytes, not merely equal values (-0.0 vs 0.0, NaN payloads)."""
    return t.contiguous().view(-1).view(torch.uint8)


def _kill_points(rng: random.Random, steps: int, checkpoints: int, n: int) -> list[list[str]]:
    """N seeded kill plans: each a list of faults applied to successive attempts (two entries = a double kill)."""
    kinds = ["step", "checkpoint-weights", "checkpoint-written", "checkpoint-pointed", "step"]  # every kind early
    plans = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        limit = steps if kind == "step" else checkpoints
        plans.append([f"{kind}:{rng.randint(1, limit)}"])
    plans.append([f"step:{rng.randint(1, steps // 2)}", f"checkpoint-weights:{rng.randint(1, 2)}"])  # killed twice
    return plans


def _check_family(spec_for, reference: Path, plans: list[list[str]], tmp_path: Path) -> list[str]:
    """Run each kill plan on a fresh copy of the spec, resume to the end, compare with REFERENCE."""
    want = _outcome(reference)
    tried = []
    for i, plan in enumerate(plans):
        spec = spec_for(f"kill{i}")
        run = spec.parent / "runs" / f"kill{i}"
        for attempt, fault in enumerate(plan):
            res = _train(spec, *(["--resume"] if attempt else []), fault=fault)
            if res.returncode == 0:  # the run ended before the point came round: the plan is void
                break
            assert res.returncode == -signal.SIGKILL, f"{fault}: rc {res.returncode}\n{res.stderr[-2000:]}"
            assert not (run / "metrics.json").exists()
        res = _train(spec, "--resume")
        assert res.returncode == 0, f"{plan}: {res.stderr[-3000:]}"
        _assert_identical(_outcome(run), want, f"killed at {plan}")
        tried.append("+".join(plan))
    return tried


def test_classifier_resumes_bitwise_after_kills(tiny_assets: dict, tmp_path: Path) -> None:
    def spec_for(name: str) -> Path:
        return _named(write_spec(tmp_path / f"{name}.yaml", tiny_assets, training={"epochs": 4, "checkpoint_steps": 5}),
                      name)

    ref = spec_for("ref")
    assert _train(ref).returncode == 0
    steps = json.loads((tmp_path / "runs" / "ref" / "history.json").read_text())["steps"][-1][0]
    assert steps >= 24  # 4 epochs of >= 6 batches: room for kills mid-epoch and at epoch ends
    plans = _kill_points(random.Random(1401), steps, checkpoints=6, n=4)
    tried = _check_family(spec_for, tmp_path / "runs" / "ref", plans, tmp_path)
    assert len(tried) == len(plans)


def _named(spec: Path, name: str) -> Path:
    data = yaml.safe_load(spec.read_text())
    data["name"] = name
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_chat_lora_resumes_bitwise_after_kills(tiny_llm: dict, tmp_path: Path) -> None:
    def spec_for(name: str) -> Path:
        spec = {"task": "chat", "name": name, "model": {"base": str(tiny_llm["model"]), "method": "lora"},
                "data": {"train": str(tiny_llm["chat"]), "max_length": 64},
                "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2, "checkpoint_steps": 4},
                "evaluation": {"generation": {"prompts": 4, "max_new_tokens": 6}},
                "output": {"dir": str(tmp_path / "runs")}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    ref = spec_for("ref")
    res = _train(ref)
    assert res.returncode in (0, 3), res.stderr[-3000:]
    steps = json.loads((tmp_path / "runs" / "ref" / "history.json").read_text())["steps"][-1][0]
    plans = _kill_points(random.Random(1402), steps, checkpoints=4, n=2)
    want = _outcome(tmp_path / "runs" / "ref")
    for i, plan in enumerate(plans):
        spec = spec_for(f"kill{i}")
        for attempt, fault in enumerate(plan):
            r = _train(spec, *(["--resume"] if attempt else []), fault=fault)
            assert r.returncode == -signal.SIGKILL, f"{fault}: rc {r.returncode}\n{r.stderr[-2000:]}"
        r = _train(spec, "--resume")
        assert r.returncode == res.returncode, r.stderr[-3000:]
        _assert_identical(_outcome(tmp_path / "runs" / f"kill{i}"), want, f"chat killed at {plan}")


@pytest.mark.parametrize("family", ["image-classification", "text-image-classification"])
def test_image_runs_with_augmentation_resume_bitwise(tiny_assets: dict, tiny_images: dict, tmp_path: Path,
                                                     family: str) -> None:
    """Per-batch augmentation seeds must continue where a half-done epoch stopped."""
    def spec_for(name: str) -> Path:
        spec = {"task": family, "name": name, "model": {"base": "tiny-cnn"},
                "data": {"train": str(tiny_images["folder"]), "image_size": 16},
                "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": None},
                "output": {"dir": str(tmp_path / "runs")}}
        if family == "text-image-classification":
            spec["model"] = {"base": str(tiny_assets["model"]), "image_base": "tiny-cnn"}
            spec["data"] = {"train": str(tiny_images["pairs"]), "image_size": 16, "max_length": 16}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    ref = spec_for("ref")
    assert _train(ref).returncode in (0, 3)
    want = _outcome(tmp_path / "runs" / "ref")
    spec = spec_for("kill")
    r = _train(spec, fault="step:9")  # epoch 2, a few batches in
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = _train(spec, "--resume")
    assert r.returncode in (0, 3), r.stderr[-3000:]
    _assert_identical(_outcome(tmp_path / "runs" / "kill"), want, f"{family} run killed after step 9")


def test_sigterm_checkpoints_marks_interrupted_and_resumes_exactly(tiny_assets: dict, tmp_path: Path) -> None:
    ref = _named(write_spec(tmp_path / "ref.yaml", tiny_assets, training={"epochs": 4}), "ref")
    assert _train(ref).returncode == 0
    spec = _named(write_spec(tmp_path / "term.yaml", tiny_assets, training={"epochs": 4}), "term")
    run = tmp_path / "runs" / "term"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "train", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = run / "checkpoints" / "LATEST"
        if latest.is_file():  # epoch 1 is done: the run is in epoch 2
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal; make it longer"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM" in err and "--resume" in err
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip() / "state.json")
                       .read_text())
    assert state["global_step"] > 12  # a checkpoint written on the signal, after epoch 1's own
    assert _train(spec, "--resume").returncode == 0
    _assert_identical(_outcome(run), _outcome(tmp_path / "runs" / "ref"), "SIGTERM in epoch 2")


def test_resume_before_any_checkpoint_starts_over(tiny_assets: dict, tmp_path: Path) -> None:
    ref = _named(write_spec(tmp_path / "ref.yaml", tiny_assets, training={"epochs": 2}), "ref")
    assert _train(ref).returncode in (0, 3)
    spec = _named(write_spec(tmp_path / "early.yaml", tiny_assets, training={"epochs": 2}), "early")
    r = _train(spec, fault="step:2")  # before the first checkpoint (the end of epoch 1)
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs" / "early" / "checkpoints" / "LATEST").exists()
    r = _train(spec, "--resume")
    assert r.returncode in (0, 3), r.stderr[-2000:]
    assert "no checkpoint yet; starting from the beginning" in r.stdout + r.stderr
    _assert_identical(_outcome(tmp_path / "runs" / "early"), _outcome(tmp_path / "runs" / "ref"), "restart")
    assert json.loads((tmp_path / "runs" / "early" / "run.json").read_text())["resumed"] is False
