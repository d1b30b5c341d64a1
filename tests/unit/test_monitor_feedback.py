"""--feedback: the combined training file keeps the original's format and columns; the spec validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data import DataError, read_source
from tunelab.monitor.feedback import read_feedback, write_retrain_spec
from tunelab.spec import load_spec, parse_spec

LABELS = ["neg", "pos"]


def _spec(train: Path, **data) -> object:
    return parse_spec({"name": "r1", "task": "text-classification", "model": {"base": "some-model"},
                       "data": {"train": str(train), **data}, "output": {"dir": "runs"}})


def test_csv_keeps_every_column_and_appends_rows(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("id,body,sentiment\n1,\"good, really\",pos\n2,bad,neg\n")
    feedback = tmp_path / "fb.csv"
    feedback.write_text("text,label\nfine,pos\n\"so, so bad\",neg\n")
    spec = _spec(train, text_column="body", label_column="sentiment")
    out = write_retrain_spec(tmp_path / "runs" / "r1", spec, feedback, tmp_path / "mon", LABELS)
    assert (out["rows_added"], out["original_rows"], out["format"]) == (2, 2, "csv")
    retrain = load_spec(out["spec"])
    assert retrain.name == "r1-retrain" and retrain.data.text_column == "body"
    assert Path(retrain.output.dir) == (tmp_path / "runs").resolve()
    data = read_source(retrain.data.train, "body", "sentiment")
    assert list(data["text"]) == ["good, really", "bad", "fine", "so, so bad"]
    assert list(data["label"]) == ["pos", "neg", "pos", "neg"]
    assert (tmp_path / "mon" / "retrain_data.csv").read_text().splitlines()[0] == "id,body,sentiment"
    assert "tunelab train" in Path(out["spec"]).read_text()
    assert any("split from the combined data" in n for n in out["notes"])


def test_jsonl_multi_label_and_datasets_folder(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "a", "label": ["pos"], "meta": 1}) + "\n"
                     + json.dumps({"text": "b", "label": ["neg", "pos"]}) + "\n")
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text(json.dumps({"text": "c", "label": ["neg"]}) + "\n")
    out = write_retrain_spec(tmp_path / "r1", _spec(train, multi_label=True), feedback, tmp_path / "m", LABELS)
    rows = [json.loads(line) for line in Path(out["data"]).read_text().splitlines()]
    assert rows[0]["meta"] == 1 and rows[-1] == {"text": "c", "label": ["neg"]}

    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["x", "y"], "label": ["pos", "neg"]}).save_to_disk(str(folder))
    fb = tmp_path / "fb.csv"
    fb.write_text("text,label\nz,neg\n")
    out = write_retrain_spec(tmp_path / "r2", _spec(folder), fb, tmp_path / "m2", LABELS)
    assert out["format"] == "jsonl" and Path(out["data"]).suffix == ".jsonl"
    assert list(read_source(load_spec(out["spec"]).data.train)["text"]) == ["x", "y", "z"]


def test_bad_feedback_rows_are_named(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\n")
    feedback = tmp_path / "fb.csv"
    feedback.write_text("text,label\nok,pos\nhm,maybe\n,neg\nx,\n")
    with pytest.raises(DataError) as err:
        read_feedback(feedback, _spec(train), LABELS)
    message = str(err.value)
    assert "fb.csv:3: unknown label 'maybe'; this run's labels are neg, pos" in message
    assert "fb.csv:4: empty text" in message and "fb.csv:5: no label" in message
    with pytest.raises(DataError, match="feedback file not found"):
        read_feedback(tmp_path / "none.csv", _spec(train), LABELS)


def test_label_ids_map_to_names_when_the_spec_lists_them(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,1\n")
    feedback = tmp_path / "fb.csv"
    feedback.write_text("text,label\nbad,0\n")
    rows = read_feedback(feedback, _spec(train, labels=LABELS), LABELS)
    assert rows[0]["label"] == "neg"
