"""model.method setfit through the real recipe on a tiny random-init sentence encoder and ~8 examples per class:
the run directory it leaves is an ordinary one (run.json with the gate, evaluate, predict, serve), its saved
model gives the in-memory model's predictions exactly, and the same seed trains the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import make_text_csv, make_tiny_sentence_encoder
from tunelab.spec import SpecError, parse_spec


@pytest.fixture(scope="module")
def setfit_spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("setfit")
    words = make_text_csv(root / "data.csv", n_per_class=12, seed=0)  # ~8 per class left for training
    encoder = make_tiny_sentence_encoder(root / "tiny-encoder", words)
    return {"task": "text-classification", "name": "setfit-run",
            "model": {"base": str(encoder), "method": "setfit", "setfit": {"iterations": 1}},
            "data": {"train": str(root / "data.csv"), "max_length": 32, "split": {"validation": 0.2, "test": 0.2}},
            "training": {"batch_size": 16, "learning_rate": 1e-3, "seed": 7},
            "energy": {"track": False}, "output": {"dir": str(root / "runs")}}


@pytest.fixture(scope="module")
def setfit_run(setfit_spec: dict) -> Path:
    from tunelab import fine_tune

    run = fine_tune(parse_spec(setfit_spec))
    assert run.promoted, run.gate
    return run.dir


def test_the_run_is_an_ordinary_run_directory(setfit_run: Path) -> None:
    from tunelab.evaluate.run import evaluate_run

    status = json.loads((setfit_run / "run.json").read_text())
    assert status["status"] == "completed" and status["gate"]["promoted"] is True
    assert status["gate"]["metric"] == "macro_f1" and status["best_epoch"] == 1
    (row,) = json.loads((setfit_run / "history.json").read_text())["epochs"]  # SetFit: one validation, after training
    assert {"train_loss", "train_macro_f1", "val_macro_f1", "val_loss"} <= set(row)
    model_files = sorted(p.name for p in (setfit_run / "model").iterdir())
    assert "model.safetensors" in model_files and not [n for n in model_files if n.endswith((".pkl", ".bin", ".pt"))]
    config = json.loads((setfit_run / "model" / "config.json").read_text())
    assert config["model_type"] == "tunelab-sentence-classifier"  # plain transformers refuses it; never a random head
    assert set(config["id2label"].values()) == {"sports", "tech", "weather"}

    rescored = evaluate_run(setfit_run, baseline=False)["fine_tuned"]  # re-loaded from model/ and re-scored
    recorded = json.loads((setfit_run / "metrics.json").read_text())["fine_tuned"]
    for split in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "n"):
            assert rescored[split][key] == recorded[split][key]


def test_saved_model_predicts_as_the_in_memory_model_and_the_seed_decides(setfit_run: Path, setfit_spec: dict) -> None:
    """Train again in memory with the run's spec (same seed): its logits equal the saved run's exactly, and
    `predict` on the run directory gives the same labels."""
    import torch

    from tunelab.evaluate.predict import predict_texts
    from tunelab.run import RunDir
    from tunelab.tasks import get_task
    from tunelab.train import methods, trainers
    from tunelab.train.loop import predict_logits

    spec = parse_spec(setfit_spec)
    task_cls = get_task(spec.task)
    prepared = task_cls.prepare_data(spec, spec.model.base, force=False)
    task = task_cls.from_spec(spec, prepared.labels)
    task.load_model(spec.model.base)  # loads the tokenizer
    validation, test = (task.encode(prepared.splits[n]) for n in ("validation", "test"))
    truth = task.truth(prepared.splits["validation"])
    job = trainers.TrainJob(task, spec.model.base, prepared.splits["train"], task.encode(prepared.splits["train"]),
                           spec, RunDir(setfit_run).path, _accelerator(),
                           evaluate=lambda m: task.metrics(truth, task.predict_ids(
                               predict_logits(m, validation, task.collator(), 64))))
    in_memory, state = trainers.train(methods.for_spec(spec), None, job)  # setfit builds its own model
    assert state.best_epoch == 1 and state.history[0]["val_macro_f1"] == 1.0

    saved_task, saved = task_cls.from_saved(RunDir(setfit_run), spec)
    ours, theirs = (predict_logits(m, test, task.collator(), 64) for m in (in_memory, saved))
    assert np.array_equal(ours, theirs)  # same seed, same model; saved and re-loaded without a bit of change
    texts = list(prepared.splits["test"]["text"])
    predicted = [r["label"] for r in predict_texts(setfit_run, texts)]
    assert predicted == [task.labels[i] for i in task.predict_ids(ours)]
    assert isinstance(saved, torch.nn.Module) and saved_task.labels == task.labels


def test_serve_classifies_and_embeds_with_the_run(setfit_run: Path) -> None:
    from fastapi.testclient import TestClient

    from tunelab.evaluate.predict import predict_texts
    from tunelab.serve import ServeSettings, create_app

    texts = ["goal match team score coach", "laptop software chip code server", "rain storm sunny"]
    with TestClient(create_app([setfit_run], ServeSettings(db="none", runtime="torch"))) as client:
        body = client.post("/v1/classify", json={"model": setfit_run.name, "input": texts}).json()
        emb = client.post("/v1/embeddings", json={"model": setfit_run.name, "input": texts,
                                                  "encoding_format": "float"}).json()
    expected = predict_texts(setfit_run, texts)
    assert [r["label"] for r in body["data"]] == [r["label"] for r in expected]
    vectors = np.array([d["embedding"] for d in emb["data"]])
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_base_that_is_no_sentence_encoder_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    from tunelab.recipes import fine_tune

    bert = tmp_path / "plain-bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    spec = parse_spec({"task": "text-classification", "name": "r", "model": {"base": str(bert), "method": "setfit"},
                       "data": {"train": "x.csv"}, "output": {"dir": str(tmp_path / "runs")}})
    with pytest.raises(SpecError, match="needs a sentence-transformers encoder.*minilm"):
        fine_tune(spec)
    assert not (tmp_path / "runs").exists()  # refused before any work: no run directory


def test_differentiable_head_converts_with_its_temperature() -> None:
    import torch
    from setfit.modeling import SetFitHead

    from tunelab.fewshot.setfit import linear_head

    torch.manual_seed(0)
    head = SetFitHead(in_features=8, out_features=3, temperature=0.7, device="cpu")
    x = torch.randn(20, 8)
    weight, bias = linear_head(head, 3)
    ours = torch.softmax(x.double() @ weight.T + bias, dim=-1).numpy()
    assert np.allclose(ours, head.predict_proba(x).detach().numpy(), atol=1e-6)


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_time_limit_ends_setfit_body_training_after_the_step_under_way(setfit_spec: dict) -> None:
    """training.time_limit holds for SetFit too (the ladder's few-shot rung relies on it): the pair batches
    stop after the first step past the limit, the head is fitted on that body, and the run records why."""
    import json

    from tunelab import fine_tune

    spec = {**setfit_spec, "name": "setfit-limited", "model": {**setfit_spec["model"], "setfit": {"iterations": 8}},
            "training": {**setfit_spec["training"], "time_limit": 0.001}}
    run = fine_tune(parse_spec(spec))
    assert run.state.stop_reason == "time-limit" and run.state.global_step == 1
    history = json.loads((run.dir / "history.json").read_text())["epochs"]
    assert history[0]["partial"] and history[0]["batches"] == 1
    assert json.loads((run.dir / "evaluation.json").read_text())["stop_reason"] == "time-limit"
