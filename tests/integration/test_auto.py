"""`tunelab auto` and training.time_limit on tiny random-init models, through the real recipes and CLI: the
ladder climbs, stops on a gain below the threshold and on a spent budget, writes its table, and its winner
is an ordinary run directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from typer.testing import CliRunner

from conftest import write_spec
from tunelab.auto import ladder as ladder_module
from tunelab.cli import app
from tunelab.spec import load_spec

LADDER_ROW_FIELDS = {"rung", "kind", "method", "status", "metric", "gain", "seconds", "energy_kwh", "co2_kg",
                     "run_dir", "time_limit", "stop_reason", "why", "trials"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> object:
    """One torch thread while these tests train: on two cores shared with other processes, two threads per
    process spin against each other (a tiny model's fit took 47 s with two threads, 1.3 s with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tunelab(*args: str) -> object:
    """The real CLI, in this process (the ladder's own runs dominate; a fresh interpreter would add its imports)."""
    return CliRunner().invoke(app, list(args))


def _rows(folder: Path) -> dict[str, dict]:
    record = json.loads((folder / "auto.json").read_text())
    assert all(set(r) == LADDER_ROW_FIELDS | {"energy_method"} for r in record["rungs"])
    return {r["rung"]: r for r in record["rungs"]}


@pytest.fixture(scope="module")
def climbed(tiny_assets: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A text-classification ladder with room to climb: LoRA learns the separable data, so full runs too."""
    spec = write_spec(tmp_path_factory.mktemp("climb") / "climb.yaml", tiny_assets, model={"method": "lora"},
                      training={"epochs": 3})
    result = tunelab("auto", str(spec), "--budget", "10m")
    return spec.parent / "runs" / "climb", result


def test_the_ladder_climbs_and_its_winner_is_a_run_directory(climbed: tuple[Path, object]) -> None:
    folder, result = climbed
    assert result.exit_code == 0, result.output[-3000:]
    rows = _rows(folder)
    assert list(rows) == ["zero-shot", "few-shot", "lora", "full"]
    assert rows["few-shot"]["status"] == "skipped" and "needs a sentence-encoder base" in rows["few-shot"]["why"]
    zero, lora, full = rows["zero-shot"], rows["lora"], rows["full"]
    assert zero["status"] == "measured" and zero["run_dir"] == lora["run_dir"] and "baseline" in zero["why"]
    assert lora["status"] == "completed" and lora["gain"] == pytest.approx(lora["metric"] - zero["metric"])
    assert lora["gain"] >= 0.005  # it paid, so the ladder climbed on to full
    assert full["status"] in ("completed", "not-promoted") and full["metric"] is not None
    for row in (lora, full):  # a small learning-rate search had room: the first rate, 3x, 1/3x, each its own run
        trials = row["trials"]
        assert [t["name"] for t in trials][0] == row["rung"] and len(trials) == 3, row["why"]
        first = trials[0]["learning_rate"]
        assert [t["learning_rate"] for t in trials] == pytest.approx([first, 3 * first, first / 3])
        statuses = []
        for t in trials:
            run_spec = load_spec(Path(t["run_dir"]) / "spec.yaml")
            assert run_spec.training.learning_rate == pytest.approx(t["learning_rate"])
            assert run_spec.model.method == row["method"] and Path(t["run_dir"]).parent == folder / "rungs"
            statuses.append(json.loads((Path(t["run_dir"]) / "run.json").read_text()))
        chosen = json.loads((Path(trials[0]["run_dir"]) / "evaluation.json").read_text())["defaults"]
        assert chosen["learning_rate"]["value"] == first  # the first trial runs at the default for the width
        # time and energy are the sum of the rung's own runs'; the row is the best trial's
        assert row["seconds"] == pytest.approx(sum(s["finished"] - s["started"] for s in statuses))
        assert row["energy_kwh"] == pytest.approx(sum(s["energy"]["energy_kwh"] for s in statuses))
        assert row["energy_kwh"] > 0
        assert row["co2_kg"] > 0 and all(s["stop_reason"] is None for s in statuses)  # each trial finished its epochs
        promoted = [t for t in trials if t["status"] == "completed"] or trials
        best = max(promoted, key=lambda t: t["metric"])
        assert row["metric"] == best["metric"] and row["run_dir"] == best["run_dir"]
        assert "learning-rate search, 3 trials" in row["why"]
        assert 0 < row["time_limit"] < 600
    record = json.loads((folder / "auto.json").read_text())
    winner = Path(record["winner_dir"])
    assert record["winner"] in ("lora", "full") and winner == Path(rows[record["winner"]]["run_dir"])
    assert (folder / "WINNER").read_text().strip() == str(winner)
    assert f"winner run directory: {winner}" in result.output.replace("\n", "")
    html = (folder / "auto.html").read_text()
    assert 'id="ladder"' in html and "data:image/png;base64" in html and "(winner)" in html
    assert 'id="trials"' in html and "(kept)" in html
    markdown = (folder / "auto.md").read_text()
    assert "| lora | lora |" in markdown and "## The learning-rate search inside the rungs" in markdown

    # an ordinary run directory: the run's spec and model load, and `tunelab evaluate` scores it
    from tunelab.evaluate.run import evaluate_run
    from tunelab.run import RunDir

    run = RunDir(winner)
    assert run.status()["status"] == "completed" and run.load_spec().model.method == record["winner"]
    assert (run.find_model() / "config.json").is_file()
    assert evaluate_run(winner, None, False)["fine_tuned"]["test"]["macro_f1"] > zero["metric"]


def _unbeatable_data(root: Path, tiny_assets: dict) -> dict:
    """Train mostly 'sports'; validation only 'sports': the majority-class baseline is perfect on validation, so no
    trained rung can beat it."""
    with open(tiny_assets["data"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    sports = [r for r in rows if r["label"] == "sports"]
    files = {"train": sports[:28] + [r for r in rows if r["label"] != "sports"][:30], "validation": sports[28:34],
             "test": sports[34:] + [r for r in rows if r["label"] != "sports"][30:36]}
    for name, part in files.items():
        with open(root / f"{name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["text", "label"])
            writer.writeheader()
            writer.writerows(part)
    return {name: str(root / f"{name}.csv") for name in files}


def test_a_gain_below_the_threshold_stops_the_ladder_and_exit_3_says_no_rung_beats_zero_shot(
        tiny_assets: dict, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "flat.yaml", tiny_assets, model={"method": "lora"},
                      data=_unbeatable_data(tmp_path, tiny_assets), training={"epochs": 1},
                      evaluation={"metric": "accuracy"})
    result = tunelab("auto", str(spec), "--budget", "10m", "--rung-trials", "1")
    assert result.exit_code == 3, result.output[-3000:]
    rows = _rows(tmp_path / "runs" / "flat")
    assert rows["zero-shot"]["metric"] == 1.0
    # both perfect on validation: the run's own gate promotes it as no worse (evaluate/gate.py), but the ladder
    # wants a gain over zero-shot, and there is none to have
    assert rows["lora"]["status"] in ("completed", "not-promoted") and rows["lora"]["gain"] <= 0
    assert len(rows["lora"]["trials"]) == 1 and "learning-rate search" not in rows["lora"]["why"]  # --rung-trials 1
    assert rows["full"]["status"] == "not-run"
    assert rows["full"]["why"].startswith("stopped: lora gained") and "below min_gain 0.005" in rows["full"]["why"]
    assert "no trained rung beats zero-shot" in result.output
    assert not (tmp_path / "runs" / "flat" / "WINNER").exists()
    from tunelab.run import RunError

    again = tunelab("auto", str(spec))  # a ladder is not replaced unless asked (main() prints it, exit 2), ...
    assert isinstance(again.exception, RunError) and "pass --overwrite" in str(again.exception)
    # ... and a training run's directory never is
    with pytest.raises(RunError, match="run directory of a `tunelab train` run, not a ladder"):
        base = load_spec(spec)
        rungs = base.output.model_copy(update={"dir": str(tmp_path / "runs" / "flat" / "rungs")})
        ladder_module.auto(base.model_copy(update={"name": "lora", "output": rungs}), overwrite=True)


def test_a_spent_budget_stops_the_ladder(tiny_assets: dict, tmp_path: Path) -> None:
    """A budget so small that LoRA's share ends its training after one step and nothing is left for full.
    (min_gain -1 switches the gain rule off, so only the budget can stop the climb.)"""
    spec = load_spec(write_spec(tmp_path / "short.yaml", tiny_assets, model={"method": "lora"}))
    result = ladder_module.auto(spec, "0.01s", min_gain=-1.0, say=lambda line: None)
    rows = {r.rung: r for r in result.rungs}
    lora = rows["lora"]
    assert 0 < lora.time_limit < 0.01 and lora.stop_reason == "time-limit"  # recorded by the recipe in run.json
    assert lora.status in ("completed", "not-promoted") and "training stopped early: time-limit" in lora.why
    assert len(lora.trials) == 1 and "no room for another learning rate" in lora.why  # the share is spent
    assert json.loads((Path(lora.run_dir) / "evaluation.json").read_text())["stop_reason"] == "time-limit"
    assert rows["full"].status == "not-run" and rows["full"].why == "the budget is spent"
    assert result.elapsed_s > result.budget_s


def test_time_limit_stops_training_after_the_current_step(tiny_assets: dict, tmp_path: Path) -> None:
    """fit itself, on the real text-classification task: the step under way finishes, then validation, a
    checkpoint and the best weights, as with early stopping. (The recipes record state.stop_reason in run.json
    and evaluation.json; test_the_ladder_climbs reads it there.)"""
    from accelerate import Accelerator

    from tunelab.data import prepare
    from tunelab.tasks import get_task
    from tunelab.train.loop import TIME_LIMIT, evaluate_split, fit

    spec = load_spec(write_spec(tmp_path / "limited.yaml", tiny_assets, training={"epochs": 5, "time_limit": "1s"}))
    spec.training.time_limit = 1e-6  # past as soon as the first step ends
    task_cls = get_task(spec.task)
    prepared = prepare(spec.data, spec.training.seed)
    task = task_cls.from_spec(spec, prepared.labels)
    model = task.apply_method(task.load_model(str(tiny_assets["model"])), spec)
    encoded = {name: task.encode(prepared.splits[name]) for name in ("train", "validation")}
    truth = task.truth(prepared.splits["validation"])
    state = fit(model, task, encoded["train"], spec, tmp_path / "run", Accelerator(),
                evaluate=lambda m: evaluate_split(m, task, encoded["validation"], truth, 64))
    assert state.stop_reason == TIME_LIMIT and state.stopped_early
    assert state.global_step == 1 and state.epoch == 1  # one step, then stop, out of 5 epochs of 12 batches
    (row,) = state.history
    assert row["partial"] is True and row["batches"] == 1 and "val_macro_f1" in row  # validated
    assert state.best_epoch == 1
    assert (tmp_path / "run" / "checkpoints" / "BEST").is_file() and (tmp_path / "run" / "checkpoints" / "LATEST").is_file()


def test_the_generative_ladder_prompts_with_examples_then_trains(tiny_llm: dict, tmp_path: Path) -> None:
    spec_file = tmp_path / "chat.yaml"
    spec_file.write_text(yaml.safe_dump({
        "task": "chat", "model": {"base": str(tiny_llm["model"])}, "data": {"train": str(tiny_llm["chat"]),
                                                                           "max_length": 256},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2},
        "evaluation": {"generation": {"prompts": 4, "max_new_tokens": 8}}, "output": {"dir": str(tmp_path / "runs")}}))
    result = ladder_module.auto(load_spec(spec_file), "10m", min_gain=10.0, rung_trials=1, say=lambda line: None)
    assert result.metric == "rouge_l"
    rows = {r.rung: r for r in result.rungs}
    assert list(rows) == ["zero-shot", "in-context", "lora", "full"]
    answers = {}
    for name, shown in (("zero-shot", 0), ("in-context", 3)):
        row = rows[name]
        assert row.status == "measured" and 0 <= row.metric <= 1 and row.seconds > 0 and row.energy_kwh > 0
        rung = json.loads((Path(row.run_dir) / "rung.json").read_text())
        assert rung["examples_shown"] == shown and rung["mean_examples_kept"] == shown
        assert len(rung["answers"]) == rung["metrics"]["n"] == 4
        answers[name] = rung["answers"]
    for bare, shots in zip(answers["zero-shot"], answers["in-context"]):  # the same prompts, 3 conversations before
        assert bare["reference"] == shots["reference"]
        assert shots["prompt"].count("<|im_start|>assistant") >= bare["prompt"].count("<|im_start|>assistant") + 3
    lora = rows["lora"]
    assert lora.status in ("completed", "not-promoted") and lora.metric is not None
    run_spec = load_spec(Path(lora.run_dir) / "spec.yaml")
    assert run_spec.evaluation.metric == "rouge_l" and run_spec.evaluation.generation.every_epoch
    assert rows["full"].status == "not-run" and rows["full"].why.startswith("stopped: lora gained")
