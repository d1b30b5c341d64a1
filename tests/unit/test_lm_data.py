"""Chat and completion data: read, checked by the doctor first, split without losing rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data import DataError
from tunelab.data.lm_data import prepare_chat, prepare_completion
from tunelab.spec import parse_spec


def _spec(train: str, task: str = "chat", **data) -> object:
    return parse_spec({"task": task, "data": {"train": train, **data}}).data


def _alpaca(path: Path, n: int, bad_rows: tuple[int, ...] = ()) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            row = {"instruction": f"question {i}?", "input": "", "output": f"answer number {i}."}
            if i in bad_rows:
                row.pop("output")
            fh.write(json.dumps(row) + "\n")
    return path


def test_alpaca_file_is_split_into_train_validation_test(tmp_path: Path) -> None:
    prepared = prepare_chat(_spec(str(_alpaca(tmp_path / "a.jsonl", 40))), seed=0)
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    assert sizes == {"train": 32, "validation": 4, "test": 4}
    first = prepared.splits["train"][0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["location"].startswith(str(tmp_path / "a.jsonl") + ":")
    assert not prepared.errors
    every = sorted(loc for ds in prepared.splits.values() for loc in ds["location"])
    assert len(every) == len(set(every)) == 40


def test_doctor_errors_stop_with_locations_and_force_drops_only_bad_rows(tmp_path: Path) -> None:
    path = _alpaca(tmp_path / "a.jsonl", 30, bad_rows=(3, 17))
    prepared = prepare_chat(_spec(str(path)), seed=0)
    errors = {f.check: f for f in prepared.errors}
    assert "chat-missing-content" in errors
    assert any(f"{path}:4" in e for e in errors["chat-missing-content"].examples)
    assert prepared.splits == {}
    forced = prepare_chat(_spec(str(path)), seed=0, force=True)
    assert sum(len(v) for v in forced.splits.values()) == 28
    dropped = next(f for f in forced.findings if f.check == "forced-drop")
    assert dropped.count == 2


def test_leakage_between_given_splits_is_an_error(tmp_path: Path) -> None:
    train = _alpaca(tmp_path / "train.jsonl", 20)
    test = tmp_path / "test.jsonl"
    test.write_text(train.read_text().splitlines()[5] + "\n" + json.dumps(
        {"instruction": "fresh question?", "input": "", "output": "fresh answer."}) + "\n")
    prepared = prepare_chat(_spec(str(train), validation=str(train), test=str(test)), seed=0)
    assert any(f.check == "leakage" for f in prepared.errors)


def test_limit_samples_training_rows(tmp_path: Path) -> None:
    prepared = prepare_chat(_spec(str(_alpaca(tmp_path / "a.jsonl", 50)), limit=20), seed=0)
    assert sum(len(v) for v in prepared.splits.values()) == 20


def test_completion_documents_and_empty_text_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"document {i} talks about topic {i % 3} at length." for i in range(12)) + "\n")
    prepared = prepare_completion(_spec(str(path), task="completion"), seed=1)
    assert sum(len(v) for v in prepared.splits.values()) == 12 and not prepared.errors
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a long enough text here", "", "another one"]))
    bad = prepare_completion(_spec(str(jsonl), task="completion"), seed=0)
    assert any(f.check == "empty-text" and f"{jsonl}:2" in f.examples for f in bad.errors)


def test_too_few_rows_to_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 3"):
        prepare_chat(_spec(str(_alpaca(tmp_path / "a.jsonl", 2))), seed=0)
