"""`tunelab train SPEC` unchanged under `accelerate launch` with 2 processes (DDP, gloo on the CPU).

accelerate 1.15 only spawns several CPU processes through torchrun (`--multi_gpu`) or mpirun; `--cpu`
alone runs ONE process. ACCELERATE_USE_CPU=1 makes each torchrun worker join a gloo process group
(MULTI_CPU) instead of running as an unrelated single-process job.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

# 4 epochs at 1e-2: with 2 processes (global batch 16) that is 24 optimiser steps, enough for the
# random-init model to separate the classes, so the test can tell gathered-in-order from scrambled
EPOCHS, BATCH = 4, 8


def _launch_cmd(spec: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "tunelab.cli", "train", str(spec)]


@pytest.fixture(scope="module")
def ddp_run(tiny_assets: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, int]:
    tmp = tmp_path_factory.mktemp("ddp")
    spec = tmp / "ddp.yaml"
    spec.write_text(yaml.safe_dump({
        "task": "text-classification",
        "model": {"base": str(tiny_assets["model"])},
        "data": {"train": str(tiny_assets["data"]), "max_length": 32},
        # eval batches of 5 over 12 examples: 3 batches, an odd count and a short last one, so the
        # gather has padding to drop
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "eval_batch_size": 5, "learning_rate": 1e-2,
                     "early_stopping_patience": None},
        "output": {"dir": str(tmp / "runs")},
    }))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1",
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(_launch_cmd(spec), cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    n_rows = sum(1 for _ in open(tiny_assets["data"], encoding="utf-8")) - 1
    return tmp / "runs", proc, n_rows


def test_ddp_run_completes_with_artifacts(ddp_run) -> None:
    runs, proc, n_rows = ddp_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # nothing else written beside the run
    run = runs / "ddp"
    assert (run / "model" / "config.json").is_file()

    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed"
    assert status["processes"] == 2

    sizes = json.loads((run / "data_report.json").read_text())["sizes"]
    assert sum(sizes.values()) == n_rows
    metrics = json.loads((run / "metrics.json").read_text())
    for kind in ("baseline", "fine_tuned"):
        for split in ("validation", "test"):
            m = metrics[kind][split]
            assert {"accuracy", "macro_f1", "n"} <= set(m), (kind, split, m)
            # gathered across both processes: every example once, none padded in or dropped
            assert m["n"] == sizes[split], (kind, split, m["n"], sizes)
    # predictions are put back in example order after the gather (else accuracy would be ~chance)
    assert metrics["fine_tuned"]["test"]["accuracy"] > metrics["baseline"]["test"]["accuracy"]

    # each process took half of the batches: optimiser steps per epoch = ceil(batches / 2)
    history = json.loads((run / "history.json").read_text())
    assert len(history["epochs"]) == EPOCHS
    assert history["steps"][-1][0] == EPOCHS * math.ceil(math.ceil(sizes["train"] / BATCH) / 2)


def test_ddp_leaves_no_stray_files(ddp_run) -> None:
    runs, proc, _ = ddp_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    stray = [str(p.relative_to(runs)) for p in runs.rglob("*")
             if ".tmp-" in p.name or ".old-" in p.name or p.name.startswith(".")]
    assert not stray, stray


def test_ddp_model_reloads_with_plain_pipeline(ddp_run) -> None:
    """The saved model in plain transformers, one process, on the same test split, scores what the
    2-process gathered evaluation reported."""
    runs, proc, _ = ddp_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    from transformers import pipeline

    from tunelab.data import prepare
    from tunelab.run import load_run_spec

    run = runs / "ddp"
    clf = pipeline("text-classification", model=str(run / "model"), device="cpu")
    spec = load_run_spec(run)
    test = prepare(spec.data, spec.training.seed).splits["test"]
    preds = [p["label"] for p in clf(list(test["text"]))]
    assert set(preds) <= {"sports", "weather", "tech"}
    accuracy = sum(p == t for p, t in zip(preds, test["label"])) / len(test)
    reported = json.loads((run / "metrics.json").read_text())["fine_tuned"]["test"]
    assert reported["n"] == len(test)
    assert abs(accuracy - reported["accuracy"]) <= 1 / len(test), (accuracy, reported)
