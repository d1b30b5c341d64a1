"""The ladder's rules without training: durations and training.time_limit in the spec, which rungs apply to
a task, how a rung's spec is derived, gains, the budget estimate, the winner, the table; and the k-shot
prompt builder of the generative ladder (lm/few_shot.py and the chat/completion tasks' in_context_prompts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import pytest
from datasets import Dataset

from tunelab.auto import ladder
from tunelab.auto.ladder import (CLASSIFIER_LADDER, COMPLETED, GENERATIVE_LADDER, MEASURED, NOT_PROMOTED, TRAINED,
                                 RungResult, choose_winner, rung_spec, skip_reason)
from tunelab.lm.few_shot import draw_shots, fitted, joined_ids, with_shots
from tunelab.reports.ladder_report import COLUMNS, TRIAL_COLUMNS, ladder_markdown, ladder_rows, trial_rows
from tunelab.spec import SpecError, parse_spec
from tunelab.spec.schema import TaskRules, duration_seconds
from tunelab.tasks import get_task
from tunelab.tasks.text_classification import TextClassificationSpec

sys.path.insert(0, str(Path(__file__).parents[1]))
from chat_helpers import make_tiny_tokenizer  # noqa: E402

RUNG = {r.name: r for r in CLASSIFIER_LADDER}
LM_RUNG = {r.name: r for r in GENERATIVE_LADDER}


def _spec(**sections: dict) -> object:
    data = {"task": "text-classification", "data": {"train": "x.csv"}, "name": "ladder", "output": {"dir": "runs"}}
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return parse_spec(data)


# -- durations and training.time_limit ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [(90, 90.0), ("90", 90.0), ("45s", 45.0), ("10m", 600.0),
                                           ("1h30m", 5400.0), ("1.5h", 5400.0), (" 2m 30s ", 150.0)])
def test_durations_read_as_people_write_them(text: object, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "m", "10m5", True])
def test_a_bad_duration_names_the_accepted_forms(text: object) -> None:
    with pytest.raises(ValueError, match="duration like 45s, 10m, 1h30m|not a duration"):
        duration_seconds(text)


def test_time_limit_in_the_spec() -> None:
    assert _spec(training={"time_limit": "10m"}).training.time_limit == 600.0
    assert _spec().training.time_limit is None
    with pytest.raises(SpecError, match=r"training.time_limit: .*not a duration; write seconds \(90\) or e.g. 45s, 10m"):
        _spec(training={"time_limit": "soon"})
    with pytest.raises(SpecError, match=r"training.time_limit"):
        _spec(training={"time_limit": 0})


# -- which rungs apply ---------------------------------------------------------------------------------------------
def test_rungs_whose_method_the_task_lacks_are_skipped_with_the_reason(tmp_path: Path) -> None:
    spec = _spec()
    assert skip_reason(RUNG["lora"], spec, str(tmp_path)) == ""
    assert skip_reason(RUNG["zero-shot"], spec, str(tmp_path)) == ""
    image = parse_spec({"task": "image-classification", "data": {"train": "x"}})
    assert "setfit" not in type(image).RULES.methods
    assert skip_reason(RUNG["few-shot"], image, str(tmp_path)).startswith(
        "image-classification has no method 'setfit' (its methods: ")
    assert skip_reason(RUNG["lora"], image, str(tmp_path)) == ""  # the image methods include lora


class _WithSetFit(TextClassificationSpec):
    RULES: ClassVar[TaskRules] = TaskRules(methods=("full", "lora", "setfit"), batchings=("length-mixed",),
                                           metrics=("macro_f1",), max_length=256,
                                           learning_rates={"full": 2e-5, "lora": 2e-4, "setfit": 2e-5})


def test_the_few_shot_rung_activates_once_the_task_lists_setfit(tmp_path: Path) -> None:
    spec = _WithSetFit.model_validate({"task": "text-classification", "data": {"train": "x.csv"}})
    assert skip_reason(RUNG["few-shot"], spec, str(tmp_path)).startswith("needs a sentence-encoder base")
    (tmp_path / "modules.json").write_text("[]")  # what makes a folder a sentence-transformers model
    assert skip_reason(RUNG["few-shot"], spec, str(tmp_path)) == ""


# -- a rung's spec ---------------------------------------------------------------------------------------------------
def test_a_rung_spec_is_the_spec_with_the_rungs_method_folder_and_limit(tmp_path: Path) -> None:
    spec = _spec(model={"method": "lora"}, training={"learning_rate": 1e-3, "time_limit": 50})
    full = rung_spec(spec, RUNG["full"], tmp_path / "ladder", "macro_f1", 120.0)
    assert full.model.method == "full" and full.name == "full"
    assert full.run_dir() == tmp_path / "ladder" / "rungs" / "full"
    assert full.training.learning_rate == pytest.approx(1e-3 * 2e-5 / 2e-4)  # scaled by the methods' defaults
    assert full.training.time_limit == 50.0  # the spec's own limit is shorter than the rung's share
    assert full.evaluation.baseline is True
    trial = rung_spec(spec, RUNG["full"], tmp_path / "ladder", "macro_f1", 120.0, name="full-lr3e-04",
                      learning_rate=3e-4)  # a search trial: its own folder, the rate as given
    assert trial.run_dir() == tmp_path / "ladder" / "rungs" / "full-lr3e-04" and trial.training.learning_rate == 3e-4
    default_rates = rung_spec(_spec(), RUNG["lora"], tmp_path, "macro_f1", 30.0)
    assert default_rates.training.learning_rate is None and default_rates.learning_rate == 2e-4
    assert default_rates.training.time_limit == 30.0


def test_a_generative_rung_is_judged_by_answers_every_epoch(tmp_path: Path) -> None:
    spec = parse_spec({"task": "chat", "data": {"train": "x.jsonl"}, "name": "c"})
    assert spec.evaluation.metric == "loss" and ladder.ladder_metric(spec) == "rouge_l"
    lora = rung_spec(spec, LM_RUNG["lora"], tmp_path, ladder.ladder_metric(spec), 10.0)
    assert lora.evaluation.metric == "rouge_l" and lora.evaluation.generation.every_epoch
    assert ladder.ladder_metric(parse_spec({"task": "chat", "data": {"train": "x"},
                                            "evaluation": {"metric": "token_f1"}})) == "token_f1"


# -- gains, budget, winner, table ------------------------------------------------------------------------------------
def _row(name: str, kind: str, metric: float | None, status: str = COMPLETED, seconds: float | None = None) -> RungResult:
    return RungResult(name, kind, None if kind != TRAINED else name, status=status, metric=metric, seconds=seconds,
                      run_dir=f"runs/x/rungs/{name}" if kind == TRAINED else None)


def test_gains_are_over_the_best_rung_before() -> None:
    rows = [_row("zero-shot", "baseline", 0.5, MEASURED), _row("lora", TRAINED, 0.8), _row("full", TRAINED, 0.7)]
    ladder._update_gains(rows, lower_is_better=False)
    assert [r.gain for r in rows] == [None, pytest.approx(0.3), pytest.approx(-0.1)]
    loss = [_row("zero-shot", "prompted", 2.0, MEASURED), _row("lora", TRAINED, 1.5)]
    ladder._update_gains(loss, lower_is_better=True)
    assert loss[1].gain == pytest.approx(0.5)
    assert "below min_gain 0.005" in ladder._stop_after(rows[2], 0.005)
    assert ladder._stop_after(rows[1], 0.005) == ""


def test_the_next_rung_must_fit_the_time_left() -> None:
    rows = [_row("zero-shot", "baseline", 0.5, MEASURED), _row("few-shot", TRAINED, None, "skipped"),
            _row("lora", TRAINED, 0.8, seconds=40.0), _row("full", TRAINED, None, "pending")]
    why = ladder._no_room(RUNG["full"], CLASSIFIER_LADDER, rows, left=60.0)
    assert why == "the budget cannot fit full: about 80 s (lora's 40 s a trial x cost 2), 60 s left"
    assert ladder._no_room(RUNG["full"], CLASSIFIER_LADDER, rows, left=100.0) == ""
    rows[2].seconds, rows[2].trials = 120.0, [{}, {}, {}]  # a searched rung: the next one needs one trial's time
    assert ladder._no_room(RUNG["full"], CLASSIFIER_LADDER, rows, left=100.0) == ""
    assert ladder._no_room(RUNG["lora"], CLASSIFIER_LADDER, rows[:2] + [_row("lora", TRAINED, None, "pending")],
                           left=-1.0) == "the budget is spent"
    # shares: a skipped rung's share goes to the rungs that run
    assert ladder._shares_from(RUNG["lora"], CLASSIFIER_LADDER, rows) == pytest.approx(0.85)


def test_no_trained_rung_beating_zero_shot_is_said_plainly() -> None:
    rows = [_row("zero-shot", "baseline", 0.9, MEASURED), _row("lora", TRAINED, 0.85, NOT_PROMOTED)]
    winner, verdict = choose_winner(rows, "accuracy", False)
    assert winner is None
    assert verdict.startswith("no trained rung beats zero-shot") and "0.9000" in verdict and "0.8500" in verdict
    rows = [_row("zero-shot", "prompted", 0.2, MEASURED), _row("in-context", "prompted", 0.6, MEASURED),
            _row("lora", TRAINED, 0.4), _row("full", TRAINED, 0.5)]
    winner, verdict = choose_winner(rows, "rouge_l", False)
    assert winner is rows[3] and "runs/x/rungs/full" in verdict and "in-context scored higher" in verdict


def test_the_table_has_every_field() -> None:
    rows = [_row("zero-shot", "baseline", 0.5, MEASURED), _row("lora", TRAINED, 0.8, seconds=12.5)]
    rows[1].energy_kwh, rows[1].co2_kg, rows[1].gain = 1e-5, 4.75e-6, 0.3
    record = {"name": "x", "rungs": [vars(r) for r in rows], "winner": "lora", "metric": "macro_f1",
              "lower_is_better": False, "budget_s": 60.0, "elapsed_s": 20.0, "min_gain": 0.005,
              "verdict": "winner: lora"}
    table = ladder_rows(record)
    assert table[1] == ["lora", "lora", "0.8000", "+0.3000", "12.5", "1.00e-05", "4.75e-06", "completed (winner)", ""]
    assert len(COLUMNS) == len(table[0]) == 9
    assert "| zero-shot | – | 0.5000 | – |" in ladder_markdown(record)


def _trial(name: str, lr: float, metric: float | None, status: str = COMPLETED, seconds: float = 10.0) -> dict:
    return {"name": name, "learning_rate": lr, "metric": metric, "status": status, "seconds": seconds,
            "energy": {"energy_kwh": 1e-5, "co2_kg": 2e-6, "method": "estimate"}, "stop_reason": None,
            "run_dir": f"runs/x/rungs/{name}"}


def test_a_searched_rung_keeps_its_best_promoted_trial_and_sums_its_cost() -> None:
    row = _row("lora", TRAINED, None)
    row.trials = [_trial("lora", 1e-3, 0.80), _trial("lora-lr3e-03", 3e-3, 0.90, NOT_PROMOTED),
                  _trial("lora-lr3e-04", 3.3e-4, 0.85)]
    ladder._keep_best_trial(row, lower_is_better=False, search_note="")
    assert row.metric == 0.85 and row.run_dir == "runs/x/rungs/lora-lr3e-04" and row.status == COMPLETED
    assert row.seconds == 30.0 and row.energy_kwh == pytest.approx(3e-5) and row.energy_method == "estimate"
    assert "learning-rate search, 3 trials (1.0e-03: 0.8000, 3.0e-03: 0.9000, 3.3e-04: 0.8500); kept 3.3e-04" in row.why
    lonely = _row("full", TRAINED, None)  # none promoted: the best of them, and its status says so
    lonely.trials = [_trial("full", 1e-4, 0.4, NOT_PROMOTED), _trial("full-lr3e-04", 3e-4, 0.5, NOT_PROMOTED)]
    ladder._keep_best_trial(lonely, lower_is_better=False, search_note="no room for another learning rate: x")
    assert lonely.metric == 0.5 and lonely.status == NOT_PROMOTED and "not-promoted" in lonely.why
    assert lonely.why.endswith("no room for another learning rate: x")
    loss = _row("lora", TRAINED, None)  # lower is better
    loss.trials = [_trial("lora", 1e-3, 2.0), _trial("lora-lr3e-03", 3e-3, 1.5)]
    ladder._keep_best_trial(loss, lower_is_better=True, search_note="")
    assert loss.metric == 1.5
    record = {"rungs": [vars(row), vars(lonely), vars(_row("zero-shot", "baseline", 0.5, MEASURED))]}
    table = trial_rows(record)
    assert len(table) == 5 and table[2] == ["lora", "lora-lr3e-04", "3.30e-04", "0.8500", "10.0", "completed (kept)",
                                            "runs/x/rungs/lora-lr3e-04"]
    assert len(table[0]) == len(TRIAL_COLUMNS)


def test_only_lora_and_full_rungs_search_and_trials_must_be_positive(tmp_path: Path) -> None:
    assert [r.name for r in CLASSIFIER_LADDER + GENERATIVE_LADDER if r.search] == ["lora", "full", "lora", "full"]
    assert ladder.LR_STEPS[0] == 1.0 and sorted(ladder.LR_STEPS) == [1 / 3, 1.0, 3.0]
    with pytest.raises(ValueError, match="rung_trials must be at least 1"):
        ladder.auto(_spec(), "1m", rung_trials=0)


# -- the k-shot prompt builder -----------------------------------------------------------------------------------------
def test_shots_are_drawn_once_per_seed() -> None:
    assert draw_shots(10, 3, seed=1) == draw_shots(10, 3, seed=1) and len(set(draw_shots(10, 3, seed=1))) == 3
    assert draw_shots(2, 3, seed=1) == [0, 1]
    assert draw_shots(10, 0, seed=1) == []


def test_shots_come_before_the_conversation_and_after_its_system_prompt() -> None:
    shot = [{"role": "system", "content": "shot system"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}]
    context = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    assert with_shots([shot, shot[1:]], context) == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q"}]
    assert joined_ids([[1, 2, 0], [3, 0]], [7, 8]) == [1, 2, 0, 3, 0, 7, 8]


def test_shots_that_do_not_fit_are_dropped_oldest_first() -> None:
    def build(shots: list[list[int]]) -> list[int]:
        return joined_ids(shots, [9, 9])

    assert fitted(build, [[1] * 3, [2] * 3], limit=8) == ([1, 1, 1, 2, 2, 2, 9, 9], 2)
    assert fitted(build, [[1] * 3, [2] * 3], limit=6) == ([2, 2, 2, 9, 9], 1)
    assert fitted(build, [[1] * 3], limit=1) == ([9], 0)  # the prompt alone, cut from the left


def test_chat_and_completion_build_k_shot_prompts() -> None:
    tokenizer = make_tiny_tokenizer("chatml")
    chat = get_task("chat")(max_length=256)
    chat.tokenizer = tokenizer
    train = Dataset.from_dict({"messages": [[{"role": "user", "content": f"city {i}?"},
                                             {"role": "assistant", "content": f"number {i}"}] for i in range(6)]})
    context = [{"role": "user", "content": "city 9?"}]
    prompts = [{"location": "v:1", "messages": context, "reference": "number 9", "prompt_ids": []}]
    (shown,) = chat.in_context_prompts(train, prompts, k=3, seed=0)
    text = chat.tokenizer.decode(shown["prompt_ids"])
    assert shown["shots"] == 3 and text.count("<|im_start|>assistant\nnumber") == 3
    assert text.rstrip().endswith("city 9?<|im_end|>\n<|im_start|>assistant")  # the held-out turn comes last
    assert shown["reference"] == "number 9"  # everything but the prompt is kept
    assert chat.in_context_prompts(train, prompts, k=3, seed=0)[0]["prompt_ids"] == shown["prompt_ids"]
    short = get_task("chat")(max_length=40)
    short.tokenizer = tokenizer
    (tight,) = short.in_context_prompts(train, prompts, k=3, seed=0)
    assert tight["shots"] < 3 and len(tight["prompt_ids"]) <= 40

    completion = get_task("completion")(max_length=256)
    completion.tokenizer = tokenizer
    docs = Dataset.from_dict({"text": ["alpha beta", "gamma delta", "epsilon"]})
    opening = completion.tokenizer("the city", add_special_tokens=True)["input_ids"]
    (shown,) = completion.in_context_prompts(docs, [{"location": "v", "prompt_ids": opening, "reference": "x"}], 2, 0)
    assert shown["shots"] == 2 and shown["prompt_ids"][-len(opening):] == opening
    assert shown["prompt_ids"].count(completion.tokenizer.eos_token_id) == 2  # each shot ends as in training


def test_a_rung_the_planner_says_does_not_fit_is_skipped_with_the_estimate(tmp_path) -> None:
    spec = parse_spec({"task": "chat", "data": {"train": "x.jsonl"}})
    memory = {"full": {"fits": False, "peak_bytes": 30 * 2**30, "note": ""},
              "lora": {"fits": True, "peak_bytes": 9 * 2**30, "note": ""}}
    assert "does not fit: estimated 30.0 GiB" in skip_reason(LM_RUNG["full"], spec, str(tmp_path), memory)
    assert skip_reason(LM_RUNG["lora"], spec, str(tmp_path), memory) == ""
