"""`data clean`: safe fixes only, inputs untouched, and no row lost without a logged reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.data.clean import CleanOptions, clean
from tunelab.data.sources import DataError, read_source

TRAIN = """text,label
"Great service, thanks",pos
"Great service, thanks",pos
"great   service, thanks!",pos
"Terrible support",neg
"   ",neg
"donâ€™t like it at all",neg
"mail me at jane.doe@example.com please",pos
"bad\x07 bell",neg
"""
TEST = """text,label
"Terrible support",neg
"Fine product",pos
"""


def test_clean_logs_every_dropped_or_changed_row(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    train, test = tmp_path / "in" / "train.csv", tmp_path / "in" / "test.csv"
    train.write_text(TRAIN)
    test.write_text(TEST)
    before = train.read_bytes()
    result = clean({"train": str(train), "test": str(test)}, tmp_path / "out", CleanOptions(redact_pii=True))
    assert train.read_bytes() == before  # input never overwritten
    changes = [json.loads(line) for line in (tmp_path / "out" / "changes.jsonl").read_text().splitlines()]
    dropped = [c for c in changes if c["action"] == "dropped"]
    assert result.rows_in == 10 and result.rows_in == result.rows_out + len(dropped)
    reasons = {c["location"].rsplit("/", 1)[1]: c["reason"] for c in dropped}
    assert reasons["train.csv:3"].startswith("exact duplicate (same label) of")
    assert reasons["train.csv:4"].startswith("exact duplicate")  # same after normalisation
    assert reasons["train.csv:6"] == "empty text"
    assert reasons["test.csv:2"].startswith("leakage: the same text is in train at")
    changed = {c["location"].rsplit("/", 1)[1]: c for c in changes if c["action"] == "changed"}
    assert "mojibake" in changed["train.csv:7"]["reason"]
    assert "redacted personal data: email" in changed["train.csv:8"]["reason"].lower()
    assert "jane.doe" not in (tmp_path / "out" / "changes.jsonl").read_text()  # no personal data in the log
    cleaned = read_source(str(tmp_path / "out" / "train.csv"))
    texts = list(cleaned["text"])
    assert "don’t like it at all" in texts and "bad bell" in texts
    assert any("[EMAIL]" in t for t in texts)


def test_clean_refuses_to_overwrite_input(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(TRAIN)
    with pytest.raises(DataError, match="never overwritten"):
        clean({"train": str(path)}, tmp_path, CleanOptions())


def test_clean_cli_on_jsonl_keeps_other_columns(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": 1, "text": "hello there", "label": "x"}\n{"id": 2, "text": "hello there", "label": "x"}\n')
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "clean", str(src), "--out", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rows in 2 = rows out 1 + dropped 1" in result.stdout
    assert json.loads((tmp_path / "c" / "a.jsonl").read_text()) == {"id": 1, "text": "hello there", "label": "x"}
