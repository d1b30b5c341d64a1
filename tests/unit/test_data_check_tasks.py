"""`tunelab data check` for every task and for several files; `data clean` resolving near-identical leakage;
data_report.json listing every affected row (issue 14, point 5: the doctor's advice must lead somewhere)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.check import CheckOptions, assign_splits, check, infer_task
from tunelab.data.clean import CleanOptions, clean

from helpers import leaky_set

runner = CliRunner()


def cli_check(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report"
    result = runner.invoke(app, ["data", "check", *args, "--out", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads((out / "data_report.json").read_text())


def finding(report: dict, check_name: str) -> dict:
    found = [f for f in report["findings"] if f["check"] == check_name]
    assert found, [f["check"] for f in report["findings"]]
    return found[0]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def chat_records(n: int) -> list[dict]:
    cities = ["paris", "rome", "berlin", "madrid", "lisbon", "vienna", "oslo", "dublin", "prague", "athens",
              "warsaw", "bern", "riga", "sofia"]
    return [{"messages": [{"role": "user", "content": f"which city is number {i} on my list of places?"},
                          {"role": "assistant", "content": f"number {i} is {cities[i % len(cities)]}."}]}
            for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------ every task


def test_valid_chat_spec_and_chat_file_pass(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(14))
    spec = tmp_path / "chat.yaml"
    spec.write_text(yaml.safe_dump({"task": "chat", "model": {"base": "tiny-cnn"}, "data": {"train": "chat.jsonl"}}))
    code, report = cli_check(tmp_path, str(spec))
    assert code == 0, report["findings"]
    assert "chat-token-counts" in {f["check"] for f in report["findings"]}  # the chat doctor ran
    assert sum(report["sizes"].values()) == 14
    code, report = cli_check(tmp_path, str(data))
    assert code == 0, report["findings"]
    assert report["sources"][0]["source"] == str(data)


def test_chat_file_errors_list_every_record(tmp_path: Path) -> None:
    bad = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(8)]  # no assistant turn
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(12) + bad)
    code, report = cli_check(tmp_path, str(data))
    assert code == 1
    no_assistant = finding(report, "chat-no-assistant")
    assert no_assistant["locations"] == [f"{data}:{13 + i}" for i in range(8)]
    assert len(no_assistant["examples"]) == 5  # people read a sample; scripts read locations
    assert "… and 3 more" in (tmp_path / "report" / "data_report.html").read_text()


def _png(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_image_folder_and_text_image_table(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    rows = []
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            path = _png(root / name / f"{i}.png", seed=10 * c + i)
            rows.append([f"a photo of a {name} sitting on the sofa number {i}", str(path.relative_to(tmp_path)), name])
    code, report = cli_check(tmp_path, str(root))
    assert code == 0, report["findings"]
    assert sum(report["sizes"].values()) == 8
    table = write_csv(tmp_path / "pairs.csv", ["text", "image", "label"], rows)
    assert infer_task(str(table), CheckOptions()) == "text-image-classification"
    code, report = cli_check(tmp_path, str(table))
    assert code == 0, report["findings"]
    (tmp_path / "broken.png").write_text("<html>not an image</html>")
    rows[2][1] = "broken.png"
    rows[3][0] = "   "
    table = write_csv(tmp_path / "pairs.csv", ["text", "image", "label"], rows)
    code, report = cli_check(tmp_path, str(table))
    assert code == 1
    assert finding(report, "image-not-an-image")["locations"] == [f"{table}:4"]
    assert finding(report, "empty-text")["locations"] == [f"{table}:5"]  # the text checks ran too


def test_options_that_do_not_fit_the_task_are_refused(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(12))
    result = runner.invoke(app, ["data", "check", str(data), "--multi-label", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "--multi-label do(es) not apply to chat data" in str(result.exception)


# ------------------------------------------------------------------ several files


def test_split_assignment_by_name_then_order() -> None:
    assert assign_splits(["train.csv", "test.csv"]) == {"train": "train.csv", "test": "test.csv"}
    assert assign_splits(["test.csv", "a.csv"]) == {"train": "a.csv", "test": "test.csv"}
    assert assign_splits(["a.csv", "b.csv", "c.csv"]) == {"train": "a.csv", "validation": "b.csv", "test": "c.csv"}
    assert assign_splits(["a.csv", "reviews_dev.csv"], test="t.csv") == {"train": "a.csv", "validation": "reviews_dev.csv",
                                                                          "test": "t.csv"}


SENTENCES = [f"the {w} of the day was {v} and everyone in town talked about it for hours"
             for w in ("match", "storm", "launch", "concert", "market", "parade", "lecture", "trial", "race", "sale")
             for v in ("great", "awful", "long", "short")]


def test_leakage_across_files_is_reported_with_file_and_row(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ["text", "label"],
                      [[s, "pos" if i % 2 else "neg"] for i, s in enumerate(SENTENCES)])
    val = write_csv(tmp_path / "val.csv", ["text", "label"],
                    [["a completely new sentence about gardens and roses in spring", "pos"],
                     [SENTENCES[3], "pos"],  # exact
                     ["an unrelated remark on trains buses and bicycles at night", "neg"]])
    test = write_csv(tmp_path / "held.csv", ["text", "label"],
                     [[SENTENCES[5].replace("hours", "days"), "pos"],  # near-identical (one word)
                      ["a note about mountains lakes and rivers far up north", "neg"]])
    code, report = cli_check(tmp_path, str(train), str(val), "--test", str(test))
    assert code == 1
    leak = finding(report, "leakage")
    assert leak["locations"] == [f"{val}:3", f"{test}:2"]
    assert leak["details"]["exact"] == 1 and leak["details"]["near"] == 1
    text = " ".join(leak["examples"])
    assert f"validation {val}:3 repeats train {train}:5 (same text)" in text
    assert f"test {test}:2 repeats train {train}:7 (similarity" in text


# ------------------------------------------------------------------ 79 near-identical leaked rows


def test_79_near_identical_leaks_are_all_listed_cleaned_and_gone(tmp_path: Path) -> None:
    files = leaky_set(tmp_path / "in")
    options = CheckOptions(validation=str(files["validation"]), test=str(files["test"]))
    report = check([str(files["train"])], options)
    leak = finding(report, "leakage")
    expected = [f"{files['validation']}:{line}" for line in range(2, 81)]
    assert leak["count"] == 79 and leak["locations"] == expected
    assert len(leak["examples"]) == 5

    result = clean({k: str(v) for k, v in files.items()}, tmp_path / "clean", CleanOptions())
    changes = [json.loads(line) for line in (tmp_path / "clean" / "changes.jsonl").read_text().splitlines()]
    dropped = [c for c in changes if c["action"] == "dropped"]
    assert sorted(c["location"] for c in dropped) == sorted(expected)
    assert all(c["reason"].startswith("leakage: a near-identical text (similarity 0.8") for c in dropped)
    assert result.rows_in == 220 and result.rows_out == 141 and result.dropped == 79

    cleaned = CheckOptions(validation=result.outputs["validation"], test=result.outputs["test"])
    again = check([result.outputs["train"]], cleaned)
    assert again["summary"]["error"] == 0, again["findings"]
    assert "leakage" not in {f["check"] for f in again["findings"]}


def test_clean_cli_on_a_spec_writes_a_spec_for_the_cleaned_files(tmp_path: Path) -> None:
    files = leaky_set(tmp_path / "in")
    spec = tmp_path / "in" / "leaky.yaml"
    spec.write_text(yaml.safe_dump({"task": "text-classification", "model": {"base": "tiny-cnn"},
                                    "data": {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}}))
    result = runner.invoke(app, ["data", "clean", str(spec), "--out", str(tmp_path / "clean")])
    assert result.exit_code == 0, result.output
    assert "rows in 220 = rows out 141 + dropped 79" in result.output
    cleaned_spec = tmp_path / "clean" / "leaky.yaml"
    data = yaml.safe_load(cleaned_spec.read_text())["data"]
    assert data["validation"] == str((tmp_path / "clean" / "validation.csv").resolve())
    code, report = cli_check(tmp_path, str(cleaned_spec))
    assert code == 0 and "leakage" not in {f["check"] for f in report["findings"]}


def test_clean_drops_chat_leakage_and_keeps_chat_records(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(12))
    test = write_jsonl(tmp_path / "test.jsonl", chat_records(14)[11:])  # record 11 repeats train's last one
    result = clean({"train": str(train), "test": str(test)}, tmp_path / "out", CleanOptions())
    assert result.dropped == 1
    [change] = [json.loads(line) for line in (tmp_path / "out" / "changes.jsonl").read_text().splitlines()]
    assert change["location"] == f"{test}:1" and change["reason"].startswith("leakage: the same text is in train")
    kept = [json.loads(line) for line in Path(result.outputs["test"]).read_text().splitlines()]
    assert kept == chat_records(14)[12:]


def test_clean_refuses_a_file_without_the_text_column(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", ["body", "label"], [["some text here", "a"]])
    with pytest.raises(Exception, match="no 'text' column"):
        clean({"train": str(src)}, tmp_path / "out", CleanOptions())


# ------------------------------------------------------------------ no truncation in the JSON report


OTHERS = [[f"another fine text number {i} here", "b"] for i in range(3)]


@pytest.mark.parametrize("rows, check_name", [
    ([["", "a"]] * 9 + OTHERS, "empty-text"),
    ([[f"text number {i} here", ""] for i in range(9)] + OTHERS, "missing-label"),
    ([[f"ok {i}", "a"] for i in range(9)] + OTHERS, "too-short"),
    ([[f"mail me at user{i}@example.com soon", "a"] for i in range(9)] + OTHERS,
     "personal-data"),
    ([["the very same text again", "a"]] * 10 + OTHERS, "exact-duplicate"),
])
def test_every_affected_row_is_listed(tmp_path: Path, rows: list[list], check_name: str) -> None:
    src = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    report = check([str(src)])
    f = finding(report, check_name)
    assert len(f["locations"]) == 9 and len(f["examples"]) <= 5
    assert all(loc.startswith(f"{src}:") for loc in f["locations"])
