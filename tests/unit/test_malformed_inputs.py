"""A hostile-user battery: malformed data files and bad specs through the real CLI entry point.

Every case asserts the exit code of `tunelab.cli.main` (tunelab.run.exitcodes: 1 a check found errors, 2 the
input cannot be used, 70 a bug) and that the message names the place: the file, the line or row, and the
column where there is one. Nothing may end in a traceback, and nothing may be read silently wrong.
Runs in-process (one import of the data stack for all cases); tests/unit/test_data_check_cli.py covers the
subprocess path.
"""

from __future__ import annotations

import codecs
import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.cli import main
from tunelab.data import sources
from tunelab.data.sources import read_source
from tunelab.run.exitcodes import CHECK_FAILED, INTERNAL, OK, USER_ERROR

ROWS = "".join(f"example text number {i} here,{'ab'[i % 2]}\n" for i in range(12))  # valid CSV data rows


def tunelab(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `tunelab ARGS` as the console script does; (exit code, stdout + stderr)."""
    argv = sys.argv
    sys.argv = ["tunelab", *args]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out + captured.err


def check(capsys: pytest.CaptureFixture[str], target: Path, tmp_path: Path, *extra: str) -> tuple[int, str, dict]:
    """`tunelab data check TARGET`: (exit code, output, the report or {} when none was written)."""
    out = tmp_path / "report"
    code, text = tunelab(capsys, "data", "check", str(target), "--out", str(out), *extra)
    report = out / "data_report.json"
    return code, text, json.loads(report.read_text()) if report.is_file() else {}


def finding(report: dict, name: str) -> dict:
    return next(f for f in report["findings"] if f["check"] == name)


def spec_file(tmp_path: Path, train: str, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"task: text-classification\noutput:\n  dir: {tmp_path / 'runs'}\ndata:\n  train: {train}\n{extra}")
    return path


# --- the cases of the probe ----------------------------------------------------------------------------------

def test_a_cell_over_128_kb_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "long.csv"
    src.write_text(f'text,label\n"{"word " * 40_000}",a\n' + ROWS)
    assert len(read_source(str(src))["text"][0]) == 200_000
    code, text, report = check(capsys, src, tmp_path)
    assert code in (OK, CHECK_FAILED) and sum(report["sizes"].values()) == 13, text


def test_a_quote_never_closed_names_the_line_it_opens_on(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "open.csv"
    src.write_text("text,label\nfine,a\n\"starts here,b\n" + "more text,a\n" * 300)
    monkeypatch.setattr(sources, "FIELD_LIMIT", 1000)  # the cell grows past the limit: csv.Error
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR and f"{src}:3: field larger than field limit" in text, text
    assert "closing quote" in text and "Traceback" not in text


def test_a_quote_never_closed_within_the_limit_names_the_lines(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "open.csv"
    src.write_text("text,label\nfine,a\n\"starts here,b\nmore text,a\n")
    code, text, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED
    assert finding(report, "malformed-file")["examples"] == [
        f"{src}:3-4: 1 fields, but the header has 2 (a quoted field opened on line 3 runs to line 4: is a closing "
        "quote missing?)"]


def test_a_corrupt_parquet_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"PAR1 this is not parquet")
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR and f"{src}: not a readable Parquet file" in text and "Traceback" not in text, text


def test_a_truncated_parquet_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"text": ["one two three"] * 50, "label": ["a", "b"] * 25}), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, text, _ = check(capsys, cut, tmp_path)
    assert code == USER_ERROR and f"{cut}: not a readable Parquet file" in text and "copy it again" in text, text


def test_duplicate_header_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dup.csv"
    src.write_text("label,text,text\na,first text,second text\n")
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR, text
    assert f"{src}:1: column 'text' appears 2 times in the header (columns 2, 3)" in text


def test_labels_mixing_ids_and_names_are_an_error_with_the_rows(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mixed.csv"
    labels = ["sports", "tech", "business"] * 4 + ["0", "2"]
    src.write_text("text,label\n" + "".join(f"some words in row {i},{lab}\n" for i, lab in enumerate(labels)))
    code, text, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED, text
    mixed = finding(report, "label-ids-mixed-with-names")
    assert mixed["severity"] == "error" and mixed["count"] == 2
    assert mixed["examples"] == [f"{src}:14 (label '0', an id)", f"{src}:15 (label '2', an id)"]
    assert mixed["locations"] == [f"{src}:14", f"{src}:15"]  # every row, for scripts
    assert "data.labels" in mixed["fix"]


def test_numbers_that_cannot_be_ids_beside_a_name_are_a_warning(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "stars.csv"
    labels = ["1", "2", "3", "4", "5"] * 3 + ["n/a"]  # star ratings and one 'n/a': may well be meant
    src.write_text("text,label\n" + "".join(f"a review of item {i},{lab}\n" for i, lab in enumerate(labels)))
    _, _, report = check(capsys, src, tmp_path)
    mixed = finding(report, "label-ids-mixed-with-names")
    assert mixed["severity"] == "warning" and mixed["examples"] == [f"{src}:17 (label 'n/a', a name)"]


JSONL_WRONG_TYPES = [
    ({"text": "a list label", "label": ["sports", "tech"]}, "column 'label' holds a list", "data.multi_label: true"),
    ({"text": "a fraction label", "label": 3.5}, "column 'label' holds 3.5, a number with a fraction", "integer ids"),
    ({"text": {"nested": "goal"}, "label": "x"}, "column 'text' holds an object", "not a string"),
    ({"text": "an object label", "label": {"name": "x"}}, "column 'label' holds an object", "integer id"),
    ({"text": 12345, "label": "x"}, "column 'text' holds a number (12345)", "not a string"),
]


def test_jsonl_values_of_the_wrong_type_are_each_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "types.jsonl"
    good = [{"text": "fine text", "label": "x"}, {"text": "an id label", "label": 1}, {"text": "also", "label": 2.0}]
    src.write_text("".join(json.dumps(r) + "\n" for r in good + [r for r, _, _ in JSONL_WRONG_TYPES]))
    code, text, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED, text
    bad = finding(report, "malformed-file")
    assert bad["count"] == len(JSONL_WRONG_TYPES)
    for number, (example, (_, where, fix)) in enumerate(zip(bad["examples"], JSONL_WRONG_TYPES), start=4):
        assert example.startswith(f"{src}:{number}: {where}") and fix in example, example
    assert all(line in text for line in bad["examples"])  # the terminal shows every bad line, not only the first


def test_a_boolean_among_named_labels_is_named_but_a_boolean_column_is_read(tmp_path: Path) -> None:
    src = tmp_path / "bools.jsonl"
    rows = [{"text": f"text {i}", "label": lab} for i, lab in enumerate(["sports", "tech", True, "sports"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(sources.MalformedFile) as err:
        read_source(str(src))
    assert err.value.problems == [f"{src}:3: column 'label' holds a boolean (true) while 3 other row(s) hold names "
                                  "or ids; write every label the same way"]
    src.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2 == 0}) + "\n" for i in range(4)))
    assert read_source(str(src))["label"] == ["True", "False", "True", "False"]  # a binary task


def test_wrong_types_stop_training_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "types.jsonl"
    src.write_text(json.dumps({"text": "x", "label": "a"}) + "\n" + json.dumps({"text": "y", "label": [1]}) + "\n")
    code, text = tunelab(capsys, "train", str(spec_file(tmp_path, str(src))))
    assert code == USER_ERROR and f"{src}:2: column 'label' holds a list ([1])" in text, text
    assert "1 value(s) of the wrong type" in text


def test_multi_label_lists_are_checked_element_by_element(tmp_path: Path) -> None:
    src = tmp_path / "multi.jsonl"
    src.write_text(json.dumps({"text": "ok", "label": ["a", 2]}) + "\n"
                   + json.dumps({"text": "bad", "label": ["a", {"b": 1}]}) + "\n")
    with pytest.raises(sources.MalformedFile, match=rf"{src}:2: column 'label' holds an object"):
        read_source(str(src), multi_label=True)


def test_an_empty_folder_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    code, text, _ = check(capsys, folder, tmp_path)
    assert code == USER_ERROR and f"{folder}: the folder holds no files" in text, text
    code, text = tunelab(capsys, "train", str(spec_file(tmp_path, str(folder))))
    assert code == USER_ERROR and f"{folder}: the folder is empty" in text, text


def test_a_batch_size_no_device_holds_is_refused_before_anything_loads(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_file(tmp_path, "whatever.csv", "training:\n  batch_size: 1000000000\n")
    code, text = tunelab(capsys, "train", str(spec))
    assert code == USER_ERROR and "training.batch_size" in text and "gradient_accumulation_steps" in text, text


# --- encodings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8"])
def test_a_file_with_a_byte_order_mark_is_read(encoding: str, tmp_path: Path) -> None:
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-le": codecs.BOM_UTF32_LE,
           "utf-8": codecs.BOM_UTF8}[encoding]
    src = tmp_path / "bom.csv"
    src.write_bytes(bom + "text,label\r\nun café très bon,a\r\nnot good,b\r\n".encode(encoding))
    ds = read_source(str(src))
    assert ds["text"] == ["un café très bon", "not good"] and ds["location"] == [f"{src}:2", f"{src}:3"]


def test_utf16_without_a_bom_gets_the_utf16_command_and_it_works(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "u16.csv"
    src.write_bytes(("text,label\n" + ROWS).encode("utf-16-le"))
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR and f"{src}:1:" in text and "iconv -f UTF-16LE -t UTF-8" in text, text
    _assert_iconv_advice_works(text, src)


def test_windows_1252_names_line_and_column_and_the_command_works(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "latin.csv"
    src.write_bytes(("text,label\n" + ROWS * 10 + "le café était bon,a\n").encode("cp1252"))
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR, text
    assert f"{src}:122: byte" in text and "(column 7 of the line)" in text and "le café était bon" in text
    assert "iconv -f CP1252 -t UTF-8" in text
    _assert_iconv_advice_works(text, src)


def _assert_iconv_advice_works(message: str, src: Path) -> None:
    """Run the iconv command the message gives, then read its output: the advice must actually work."""
    if shutil.which("iconv") is None:
        pytest.skip("no iconv on this machine")
    command = message[message.index("`iconv") + 1:]
    command = command[:command.index("`")]
    subprocess.run(["sh", "-c", command], check=True, timeout=60)
    converted = src.with_suffix(".utf8" + src.suffix)
    assert len(read_source(str(converted))) >= 12


def test_nul_bytes_in_a_cell_are_a_finding_with_the_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "nul.csv"
    src.write_text("text,label\n" + ROWS + "broken\x00\x00 cell here,a\n")
    code, text, report = check(capsys, src, tmp_path)
    flagged = [f for f in report["findings"] if any(e.startswith(f"{src}:14") for e in f["examples"])]
    assert flagged and "Traceback" not in text, report["findings"]


def test_mixed_line_endings_keep_every_row_and_its_line(tmp_path: Path) -> None:
    src = tmp_path / "endings.csv"
    src.write_bytes(b"text,label\r\nfirst row,a\nsecond row,b\rthird row,a\r\n")
    ds = read_source(str(src))
    assert ds["text"] == ["first row", "second row", "third row"]
    assert ds["location"] == [f"{src}:2", f"{src}:3", f"{src}:4"]


# --- structure ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content", "message"), [
    ("header.csv", "text,label\n", "no examples found: the file has no data rows"),
    ("empty.csv", "", "the file is empty; expected a header row"),
    ("blank.jsonl", "\n\n", "no examples found"),
    ("sheet.xlsx", "PK...", "unsupported file type '.xlsx'"),
])
def test_files_without_data_are_user_errors(name: str, content: str, message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    src.write_text(content)
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR and str(src) in text and message in text, text


def test_many_bad_jsonl_lines_are_all_counted_and_twenty_listed(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "many.jsonl"
    src.write_text("".join('{"text": broken\n' if i % 2 else '{"text": "ok", "label": "a"}\n' for i in range(60)))
    code, text, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED and finding(report, "malformed-file")["count"] == 30
    assert f"{src}:2: not valid JSON" in text and f"{src}:40: not valid JSON" in text  # the 1st and 20th
    assert f"{src}:42:" not in text and "... and 10 more" in text
    code, text = tunelab(capsys, "train", str(spec_file(tmp_path, str(src))))
    assert code == USER_ERROR and "30 malformed line(s)" in text and f"{src}:40:" in text and "and 10 more" in text


ARRAY = json.dumps([{"text": "a b c", "label": "x"}, {"text": "d e f", "label": "y"}], indent=2)


@pytest.mark.parametrize(("name", "content", "fragments"), [
    ("array.jsonl", ARRAY, ["array.jsonl: one JSON array", "jq -c '.[]'"]),
    ("array.json", '[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n',
     ["array.json:3: not valid JSON"]),
    ("export.jsonl", json.dumps({"data": [{"text": "a", "label": "x"}]}, indent=2),
     ["export.jsonl: one JSON object spread over several lines", "jq -c '.\"data\"[]'"]),
    ("cols.csv", "Text,label\nhello there,a\n",
     ["cols.csv: missing column(s) ['text']; the data has ['Text', 'label']", "'text' is closest to 'Text'"]),
    ("excel.csv", "text;label\nhello there;a\n", ["excel.csv: missing column(s)", "looks semicolon-separated"]),
])
def test_files_of_the_wrong_shape_say_how_to_fix_them(name: str, content: str, fragments: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    src.write_text(content)
    code, text, _ = check(capsys, src, tmp_path)
    assert code == USER_ERROR and all(f in text for f in fragments), text


def test_a_json_file_holding_one_array_is_read(tmp_path: Path) -> None:
    src = tmp_path / "array.json"
    src.write_text(ARRAY)
    ds = read_source(str(src))
    assert ds["label"] == ["x", "y"] and ds["location"] == [f"{src} record 0", f"{src} record 1"]


def test_a_key_given_twice_in_one_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "twice.jsonl"
    src.write_text('{"text": "a", "label": "x"}\n{"text": "b", "text": "c", "label": "y"}\n')
    code, _, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED
    assert finding(report, "malformed-file")["examples"] == [f"{src}:2: key 'text' appears twice in one object; keep one"]


def test_a_unicode_line_separator_inside_a_string_does_not_split_the_line(tmp_path: Path) -> None:
    src = tmp_path / "sep.jsonl"
    src.write_text(json.dumps({"text": "one\u2028two", "label": "x"}, ensure_ascii=False) + "\n"
                   + json.dumps({"text": "three", "label": "y"}) + "\n")
    ds = read_source(str(src))
    assert ds["text"] == ["one\u2028two", "three"] and ds["location"] == [f"{src}:1", f"{src}:2"]


def test_a_parquet_text_column_of_numbers_names_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"text": [101, 102], "label": ["a", "b"]}), src)
    code, _, report = check(capsys, src, tmp_path)
    assert code == CHECK_FAILED
    assert finding(report, "malformed-file")["examples"][1].startswith(f"{src} row 1: column 'text' holds a number")


def test_a_broken_datasets_folder_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{not json")
    (folder / "state.json").write_text("{}")
    code, text, _ = check(capsys, folder, tmp_path)
    assert code == USER_ERROR and f"{folder}: not a readable `datasets` folder" in text, text


def test_a_label_column_that_is_all_empty_lists_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "unlabelled.csv"
    src.write_text("text,label\n" + "".join(f"text of row {i},\n" for i in range(8)))
    code, _, report = check(capsys, src, tmp_path)
    missing = finding(report, "missing-label")
    assert code == CHECK_FAILED and missing["count"] == 8 and missing["examples"][0] == f"{src}:2"


# --- specs ---------------------------------------------------------------------------------------------------

def test_a_spec_with_an_unknown_key_names_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_file(tmp_path, "x.csv", "training:\n  epoch: 3\n")
    code, text = tunelab(capsys, "train", str(spec))
    assert code == USER_ERROR and "training.epoch: unknown key; did you mean 'epochs'?" in text, text


def test_a_spec_pointing_at_a_missing_file_names_where_it_looked(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_file(tmp_path, "data/tickets.csv")
    code, text, _ = check(capsys, spec, tmp_path)
    assert code == USER_ERROR and "data/tickets.csv: no such file or folder (looked for " in text, text


# --- the exit-code scheme for what is not the user's input ----------------------------------------------------

@pytest.mark.parametrize(("raised", "expected", "shown"), [
    (RuntimeError("an invariant that should hold"), INTERNAL,
     ["Traceback", "RuntimeError: an invariant that should hold", "this is a bug in tunelab", "please report it"]),
    (KeyboardInterrupt(), 130, []),
    (OSError(errno.ENOSPC, "No space left on device"), USER_ERROR, ["No space left on device; free some space"]),
])
def test_a_bug_an_interrupt_and_a_full_disk_get_their_own_codes(raised: BaseException, expected: int,
                                                                shown: list[str], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a bug prints a traceback (and says whose bug it is); Ctrl-C and a full disk are not bugs."""
    def stopped(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr("tunelab.data.check.check", stopped)
    code, text = tunelab(capsys, "data", "check", "anything.csv", "--out", str(tmp_path))
    assert code == expected and all(part in text for part in shown), text
    assert ("Traceback" in text) == (expected == INTERNAL)
