"""`tunelab tune` without training: the default search space per task and method, the spec's search: section
(narrow, extend, drop, reject), parameters written onto a spec copy, Optuna drawing from the space, and the
study's storage on SQLite and PostgreSQL (heartbeats, stale trials failed and their parameters retried)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from test_serve_store import postgres_url  # noqa: F401  (the throwaway PostgreSQL cluster fixture)
from tunelab.auto.search_space import apply_params, describe, resolve_space, sample
from tunelab.auto.tune import finished, open_study
from tunelab.spec import SpecError, parse_spec
from tunelab.spec.schema import duration_seconds


def spec_of(tmp_path: Path, method: str = "full", task: str = "text-classification", **search):
    return parse_spec({"task": task, "name": "s", "model": {"method": method}, "data": {"train": "x.csv"},
                       "training": {"epochs": 3, "batch_size": 16}, "output": {"dir": str(tmp_path / "runs")},
                       "search": search})


def test_default_space_sits_around_the_methods_default_rate(tmp_path: Path) -> None:
    full = resolve_space(spec_of(tmp_path))
    assert set(full) == {"learning_rate", "epochs", "batch_size", "warmup", "weight_decay"}
    lr = full["learning_rate"]
    assert lr.log and lr.low == pytest.approx(2e-5 / 5) and lr.high == pytest.approx(2e-5 * 5)  # full: 2e-5
    assert (full["epochs"].low, full["epochs"].high) == (2, 6) and full["batch_size"].choices == [8, 16, 32]
    lora = resolve_space(spec_of(tmp_path, "lora"))
    assert {"lora_r", "lora_alpha", "lora_dropout"} <= set(lora)
    assert lora["learning_rate"].high == pytest.approx(2e-4 * 5)  # LoRA's default rate is 2e-4
    chat = resolve_space(parse_spec({"task": "chat", "model": {"method": "dora"}, "data": {"train": "x.jsonl"}}))
    assert "lora_r" in chat  # DoRA adapters read model.lora too
    image = resolve_space(parse_spec({"task": "image-classification", "model": {"method": "lora"},
                                      "data": {"train": "imgs"}}))
    assert "lora_r" not in image  # the image LoRA strategy has fixed settings: nothing to search there


def test_search_section_narrows_extends_and_drops(tmp_path: Path) -> None:
    space = resolve_space(spec_of(tmp_path, "lora", space={
        "learning_rate": {"low": 1e-4, "high": 1e-3},  # keeps the default's log scale
        "epochs": {"choices": [2, 4]}, "batch_size": None, "lora_r": {"choices": [8]},
        "weight_decay": {"high": 0.3}}))  # extends the default's 0..0.1
    assert space["learning_rate"].log and (space["learning_rate"].low, space["learning_rate"].high) == (1e-4, 1e-3)
    assert space["epochs"].choices == [2, 4] and space["epochs"].low is None
    assert "batch_size" not in space and space["lora_r"].choices == [8]
    assert (space["weight_decay"].low, space["weight_decay"].high) == (0.0, 0.3)
    assert describe(space)["learning_rate"] == "0.0001 to 0.001, log scale"


def test_search_section_rejects_unknown_and_inapplicable_keys(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"search.space.lr: unknown parameter; valid: learning_rate, epochs, "
                                        r"batch_size, warmup, weight_decay, lora_r, lora_alpha, lora_dropout"):
        resolve_space(spec_of(tmp_path, space={"lr": {"low": 1e-5, "high": 1e-4}}))
    with pytest.raises(SpecError, match="LoRA settings apply to model.method lora, dora or qlora"):
        resolve_space(spec_of(tmp_path, "full", space={"lora_r": {"choices": [8]}}))
    with pytest.raises(SpecError, match="warmup"):  # 1.5 is no valid warmup fraction: refused before any trial
        resolve_space(spec_of(tmp_path, space={"warmup": {"low": 0.0, "high": 1.5}}))
    with pytest.raises(SpecError, match="unknown key"):
        spec_of(tmp_path, trails=3)
    with pytest.raises(SpecError, match="search.pruner 'sometimes'"):
        spec_of(tmp_path, pruner="sometimes")


def test_trial_parameters_land_on_a_validated_copy(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "lora")
    copy = apply_params(spec, {"learning_rate": 3e-4, "epochs": 5, "lora_r": 4, "lora_dropout": 0.05},
                        name="trial-001", output={"dir": str(tmp_path / "runs/s/trials")})
    assert (copy.training.learning_rate, copy.training.epochs, copy.model.lora.r, copy.model.lora.dropout) == \
        (3e-4, 5, 4, 0.05)
    assert copy.run_dir() == tmp_path / "runs/s/trials/trial-001"
    assert spec.training.learning_rate is None and spec.model.lora.r == 16  # the original is untouched


def test_optuna_draws_inside_the_space(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "lora", space={"epochs": {"choices": [2, 4]}})
    space = resolve_space(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(5):
        params = sample(study.ask(), space)
        assert params["epochs"] in (2, 4) and isinstance(params["batch_size"], int)
        assert space["learning_rate"].low <= params["learning_rate"] <= space["learning_rate"].high
        assert params["lora_r"] in (4, 8, 16, 32)
        apply_params(spec, params)  # every draw makes a valid spec


def test_durations() -> None:
    assert duration_seconds("30m") == 1800 and duration_seconds("2h") == 7200 and duration_seconds(45) == 45
    assert duration_seconds(None) is None
    with pytest.raises(SpecError, match="--timeout 'soon': not a duration"):
        duration_seconds("soon", "--timeout")


def _storage_round_trip(spec, url: str) -> None:
    """A study in URL: trials written, a stale RUNNING trial (its process gone) failed and its parameters
    queued again, and a second open of the study sees the same trials."""
    study = open_study(spec, url, "s")
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    study.tell(trial, 0.5)
    stale = study.ask()  # then "killed": no heartbeat ever comes
    lr = stale.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    study._storage.record_heartbeat(stale._trial_id)
    # grace period: 2 x heartbeat_seconds (1); SQLite's clock in the stale query counts whole seconds, so wait
    # a full second beyond it (2.5 s failed now and then)
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    again = open_study(spec, url, "s")
    states = [t.state.name for t in again.get_trials()]
    assert states == ["COMPLETE", "FAIL", "WAITING"]
    retry = again.get_trials()[2]
    assert retry.params["learning_rate"] == lr and retry.system_attrs["failed_trial"] == stale.number
    assert finished(again) == 1 and again.direction == optuna.study.StudyDirection.MAXIMIZE


def test_sqlite_storage_fails_stale_trials_and_retries_them(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, heartbeat_seconds=1)
    url = f"sqlite:///{tmp_path / 'runs' / 'tunelab.db'}"  # its folder is created
    _storage_round_trip(spec, url)


def test_postgres_storage(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    _storage_round_trip(spec_of(tmp_path, heartbeat_seconds=1), postgres_url)


def test_trials_of_searched_lengths_are_compared_at_the_same_share_of_their_schedules(tmp_path: Path) -> None:
    from tunelab.auto.tune import EPOCH, PERCENT, pruning_step

    assert pruning_step(resolve_space(spec_of(tmp_path))) == PERCENT  # the default space searches 2-6 epochs
    assert pruning_step(resolve_space(spec_of(tmp_path, space={"epochs": {"choices": [2, 4]}}))) == PERCENT
    assert pruning_step(resolve_space(spec_of(tmp_path, space={"epochs": {"choices": [3]}}))) == EPOCH
    assert pruning_step(resolve_space(spec_of(tmp_path, space={"epochs": None}))) == EPOCH
