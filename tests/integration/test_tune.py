"""`tunelab tune` on a tiny random-init BERT: a study that prunes a hopeless trial, scores test once on the
winner only, and writes its report; and the CLI killed mid-study and run again, ending with exactly N finished
trials and the killed trial failed and retried; two workers on one study; and a chat study (the generative path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import write_spec
from tunelab.auto.tune import TRIALS, open_study, tune
from tunelab.spec import load_spec


def small_spec(tmp_path: Path, assets: dict, **search) -> Path:
    path = write_spec(tmp_path / "study.yaml", assets, search={"startup_trials": 1, "warmup_epochs": 0, **search},
                      training={"epochs": 2, "batch_size": 16})
    return path


def test_study_prunes_and_scores_test_once_on_the_winner(tiny_assets: dict, tmp_path: Path) -> None:
    spec = load_spec(small_spec(tmp_path, tiny_assets, space={
        "learning_rate": {"choices": [2e-2, 1e-7]}, "epochs": {"choices": [2, 4]}, "batch_size": None, "warmup": None,
        "weight_decay": None}))
    url = f"sqlite:///{tmp_path / 'runs' / 'tunelab.db'}"
    study = open_study(spec, url, "study")
    study.enqueue_trial({"learning_rate": 2e-2, "epochs": 2})  # a good trial, then a hopeless one to prune
    study.enqueue_trial({"learning_rate": 1e-7, "epochs": 4})
    result = tune(spec, trials=2)

    study = optuna.load_study(study_name="study", storage=url)
    good, bad = study.get_trials()
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    # the epochs are searched, so the trials report at the share of their schedules: the 2-epoch trial at 50 and
    # 100, the 4-epoch one at 25 (nothing to compare with there: no pruning) and 50, where it trails and stops
    assert set(good.intermediate_values) == {50, 100} and set(bad.intermediate_values) == {25, 50}
    assert good.user_attrs["epochs"] == 2 and bad.user_attrs["epochs"] == 2 and study.user_attrs["step"] == "percent of schedule"
    assert json.loads((Path(bad.user_attrs["run_dir"]) / "run.json").read_text())["status"] == "pruned"

    # test scored once, on the winner only: trial runs leave it out, the winner's metrics.json gains it
    assert result.winner == Path(good.user_attrs["run_dir"]) == tmp_path / "runs" / "study" / TRIALS / "trial-000"
    winner_metrics = json.loads((result.winner / "metrics.json").read_text())
    assert set(winner_metrics["fine_tuned"]) == {"validation", "test"} and "test" in winner_metrics["baseline"]
    assert not (Path(bad.user_attrs["run_dir"]) / "metrics.json").exists()
    evaluation = json.loads((result.winner / "evaluation.json").read_text())  # what training itself scored
    assert "test" not in evaluation["fine_tuned"] and "test" not in evaluation["baseline"]
    assert study.user_attrs["test"]["trial"] == 0

    report = json.loads((result.dir / "tune.json").read_text())
    assert report["finished"] == 2 and report["winner"]["trial"] == 0 and report["winner"]["promoted"]
    assert report["winner"]["test"]["fine_tuned"]["n"] == 12
    rows = {r["number"]: r for r in report["trials"]}
    assert rows[1]["state"] == "PRUNED" and rows[1]["energy_kwh"] > 0 and rows[0]["energy_kwh"] > 0
    assert report["energy"]["energy_kwh"] == pytest.approx(rows[0]["energy_kwh"] + rows[1]["energy_kwh"])
    assert "at least 2 completed trials" in report["importances_note"]
    page = (result.dir / "tune.html").read_text()
    assert 'id="history"' in page and 'id="curves"' in page
    winner = load_spec(result.dir / "winner.yaml")  # what `tunelab train` reads
    assert winner.training.learning_rate == 2e-2 and winner.name == "study-winner"

    # a re-run of a finished study trains nothing and does not score test again
    scored_at = study.user_attrs["test"]["scored_at"]
    tune(spec, trials=2)
    assert optuna.load_study(study_name="study", storage=url).user_attrs["test"]["scored_at"] == scored_at


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", "tune", *args]


def _has_heartbeat(tmp_path: Path, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the running TRIAL's heartbeat thread has written its first beat: a trial killed before that is
    indistinguishable from a live one (Optuna fails only trials whose beat went stale), so the test kills after."""
    import sqlite3

    with sqlite3.connect(tmp_path / "runs" / "tunelab.db") as db:
        return db.execute("select count(*) from trial_heartbeats where trial_id = ?",
                          (trial._trial_id,)).fetchone()[0] > 0


def test_killed_study_resumes_to_exactly_n_trials(tiny_assets: dict, tmp_path: Path) -> None:
    path = small_spec(tmp_path, tiny_assets, trials=2, pruner="none", heartbeat_seconds=1, space={
        "epochs": {"choices": [1]}, "batch_size": None})
    url = f"sqlite:///{tmp_path / 'runs' / 'tunelab.db'}"
    # the kill lands at the end of the second trial's only epoch (trial 1's epoch is pass 1): a timed kill from
    # outside raced the trial on a fast machine, which finished it before the poll saw it running
    env = {**os.environ, "TUNELAB_FAULT": "epoch:2"}
    killed_run = subprocess.run(_cli(str(path)), capture_output=True, text=True, timeout=300, env=env)
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    killed = optuna.load_study(study_name="study", storage=url).get_trials()[-1]
    assert [t.state.name for t in optuna.load_study(study_name="study", storage=url).get_trials()] == [
        "COMPLETE", "RUNNING"]
    assert _has_heartbeat(tmp_path, killed)  # a trial that beat once goes stale and is failed, then retried
    time.sleep(2.5)  # the killed trial's heartbeat goes stale (grace period: 2 x heartbeat_seconds)

    again = subprocess.run(_cli(str(path)), capture_output=True, text=True, timeout=300)
    assert again.returncode in (0, 3), again.stderr[-3000:]
    trials = optuna.load_study(study_name="study", storage=url).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 2
    assert trials[killed.number].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"
    run_dirs = [t.user_attrs["run_dir"] for t in trials if t.state.name == "COMPLETE"]
    assert len(set(run_dirs)) == 2  # no trial ran twice into one run directory
    report = json.loads((tmp_path / "runs" / "study" / "tune.json").read_text())
    assert report["finished"] == 2 and report["states"]["FAIL"] == 1
    assert "trial" in again.stdout and "winner: trial" in again.stdout
    assert yaml.safe_load((tmp_path / "runs" / "study" / "winner.yaml").read_text())["task"] == "text-classification"


EPOCHS = 30


def test_two_workers_share_one_study_and_end_with_exactly_n_trials(tiny_assets: dict, tmp_path: Path) -> None:
    """--workers 2: a spawned process and this one draw trials from one SQLite study. The study ends with N
    finished trials, or at most one more (the trial still running when the N-th finished is completed), no
    trial folder is used twice, and both workers ran trials (the spawned worker's first trial starts within
    seconds of its imports, while this worker's first trial trains EPOCHS epochs, far longer)."""
    spec = load_spec(small_spec(tmp_path, tiny_assets, pruner="none", space={
        "learning_rate": {"choices": [5e-3]}, "epochs": {"choices": [EPOCHS]}, "batch_size": None, "warmup": None,
        "weight_decay": None}))
    result = tune(spec, trials=2, workers=2)
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'runs' / 'tunelab.db'}")
    trials = study.get_trials()
    assert {t.state.name for t in trials} == {"COMPLETE"} and len(trials) in (2, 3)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    folders = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(folders)) == len(trials) and all((Path(f) / "run.json").is_file() for f in folders)
    report = json.loads((result.dir / "tune.json").read_text())
    assert report["finished"] == len(trials) and sorted(r["worker"] for r in report["trials"]) == sorted(
        t.user_attrs["worker"] for t in trials)


def test_a_chat_study_searches_lora_and_judges_by_validation_loss(tiny_llm: dict, tmp_path: Path) -> None:
    """The generative path end to end: a LoRA chat spec on a tiny Llama, two trials over the learning rate and
    LoRA's rank, each a child chat run; the winner has the lowest validation loss (lower is better) and is
    scored on test once."""
    spec_file = tmp_path / "chat.yaml"
    spec_file.write_text(yaml.safe_dump({
        "task": "chat", "name": "chatstudy", "model": {"base": str(tiny_llm["model"]), "method": "lora"},
        "data": {"train": str(tiny_llm["chat"]), "max_length": 128},
        "training": {"epochs": 1, "batch_size": 8},
        "evaluation": {"generation": {"prompts": 2, "max_new_tokens": 4}},
        "search": {"trials": 2, "pruner": "none", "space": {
            "learning_rate": {"choices": [1e-2, 1e-5]}, "lora_r": {"choices": [4, 8]}, "epochs": None,
            "batch_size": None, "warmup": None, "weight_decay": None, "lora_alpha": None, "lora_dropout": None}},
        "output": {"dir": str(tmp_path / "runs")}}))
    spec = load_spec(spec_file)
    assert spec.lower_is_better and spec.evaluation.metric == "loss"
    url = f"sqlite:///{tmp_path / 'runs' / 'tunelab.db'}"
    study = open_study(spec, url, "chatstudy")
    study.enqueue_trial({"learning_rate": 1e-2, "lora_r": 4})
    study.enqueue_trial({"learning_rate": 1e-5, "lora_r": 8})
    result = tune(spec)
    trials = optuna.load_study(study_name="chatstudy", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for t in trials:  # each trial is a chat run with the drawn parameters
        run_spec = load_spec(Path(t.user_attrs["run_dir"]) / "spec.yaml")
        assert run_spec.task == "chat" and run_spec.model.method == "lora"
        assert (run_spec.training.learning_rate, run_spec.model.lora.r) == (t.params["learning_rate"], t.params["lora_r"])
    best = min(trials, key=lambda t: t.value)
    assert result.winner == Path(best.user_attrs["run_dir"]) and best.params["learning_rate"] == 1e-2
    metrics = json.loads((result.winner / "metrics.json").read_text())
    assert "test" in metrics["fine_tuned"] and "loss" in metrics["fine_tuned"]["test"]
    report = json.loads((result.dir / "tune.json").read_text())
    assert report["finished"] == 2 and report["winner"]["trial"] == best.number
    assert load_spec(result.dir / "winner.yaml").model.lora.r == best.params["lora_r"]
