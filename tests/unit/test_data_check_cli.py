"""`tunelab data check` on the three kinds of input: labelled text, chat JSONL, an image folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image


def data_check(target: Path | str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "check", str(target), "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=300)
    report = json.loads((out / "data_report.json").read_text())
    assert (out / "data_report.html").is_file()
    return result, report


def test_text_file_with_errors_exits_1_and_names_rows(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("text,label\n" + "".join(f"row number {i} here,{'ab'[i % 2]}\n" for i in range(20)) + ",a\n")
    result, report = data_check(src, tmp_path / "out")
    assert result.returncode == 1
    assert report["schema_version"] == 1 and report["sizes"] == {"train": 21}
    empty = [f for f in report["findings"] if f["check"] == "empty-text"][0]
    assert empty["examples"] == [f"{src}:22"]
    assert "empty-text" in result.stdout


def test_chat_jsonl_is_checked_with_chat_rules(tmp_path: Path) -> None:
    src = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "bot", "content": "hi"}]}
    src.write_text("".join(json.dumps(r) + "\n" for r in [good] * 11 + [bad]))
    result, report = data_check(src, tmp_path / "out")
    assert result.returncode == 1
    checks = {f["check"]: f for f in report["findings"]}
    assert checks["chat-unknown-role"]["examples"][0].startswith(f"{src}:12")
    assert "chat-no-assistant" in checks and "chat-token-counts" in checks


def test_image_folder_with_a_non_image_and_a_cross_split_copy(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        (root / split / "cat").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "train" / "cat" / "a.png")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "val" / "cat" / "a_copy.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(root / "train" / "cat" / "b.png")
    (root / "train" / "cat" / "notes.png").write_text("<html>not an image</html>")
    result, report = data_check(root, tmp_path / "out")
    assert result.returncode == 1
    assert report["sizes"] == {"train": 3, "validation": 1}
    checks = {f["check"] for f in report["findings"]}
    assert {"image-not-an-image", "image-split-duplicate"} <= checks


def test_malformed_file_reports_every_bad_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "a", "label": "x"}\n{"text": "b", label}\n{"text": "c", "label": "y"}\n[1, 2]\n')
    result, report = data_check(src, tmp_path / "out")
    assert result.returncode == 1
    [finding] = report["findings"]
    assert finding["check"] == "malformed-file" and finding["count"] == 2
    assert finding["examples"][0].startswith(f"{src}:2: not valid JSON")
    assert finding["examples"][1] == f"{src}:4: each line must be a JSON object, got list"
