import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.data import DataError, prepare, read_source
from tunelab.tasks.sections import LabelledTextData as DataSpec


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def balanced_csv(path: Path, n: int = 10, labels: tuple[str, ...] = ("pos", "neg")) -> Path:
    rows = ["review,sentiment"] + [f"text number {i} about {lab},{lab}" for lab in labels for i in range(n)]
    return write(path, "\n".join(rows) + "\n")


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    ds = read_source(str(balanced_csv(tmp_path / "a.csv")), "review", "sentiment")
    assert len(ds) == 20
    assert ds[0]["text"] == "text number 0 about pos"
    assert ds[0]["label"] == "pos"
    assert ds[0]["location"].endswith("a.csv:2")  # header is line 1


def test_tsv_jsonl_parquet_and_datasets_folder(tmp_path: Path) -> None:
    write(tmp_path / "a.tsv", "text\tlabel\nhello, world\tx\nbye\ty\n")
    assert list(read_source(str(tmp_path / "a.tsv"))["label"]) == ["x", "y"]
    write(tmp_path / "a.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": 0}\n')
    ds = read_source(str(tmp_path / "a.jsonl"))
    assert list(ds["label"]) == ["1", "0"] and ds[1]["location"].endswith("a.jsonl:3")
    pq.write_table(pa.table({"body": ["a", "b"], "y": ["p", "q"]}), tmp_path / "a.parquet")
    ds = read_source(str(tmp_path / "a.parquet"), "body", "y")
    assert list(ds["text"]) == ["a", "b"] and ds[1]["location"].endswith("a.parquet row 1")
    datasets.Dataset.from_dict({"text": ["u", "v"], "label": ["m", "n"]}).save_to_disk(str(tmp_path / "saved"))
    assert list(read_source(str(tmp_path / "saved"))["label"]) == ["m", "n"]


def test_missing_column_names_file_and_available_columns(tmp_path: Path) -> None:
    path = balanced_csv(tmp_path / "tickets.csv")
    with pytest.raises(DataError) as err:
        read_source(str(path), "text", "sentiment")
    message = str(err.value)
    assert "tickets.csv" in message and "missing column(s) ['text']" in message
    assert "['review', 'sentiment']" in message and "data.text_column" in message


def test_malformed_inputs_name_the_line(tmp_path: Path) -> None:
    write(tmp_path / "bad.csv", "text,label\nok,a\ntoo,many,fields\n")
    with pytest.raises(DataError, match=r"bad.csv:3: 3 fields, but the header has 2"):
        read_source(str(tmp_path / "bad.csv"))
    write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_source(str(tmp_path / "bad.jsonl"))
    write(tmp_path / "latin.csv", "text,label\ncaf\u00e9,a\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"latin.csv:2: byte 14 \(0xe9\) is not valid UTF-8"):
        read_source(str(tmp_path / "latin.csv"))
    write(tmp_path / "latin.jsonl", '{"text": "ok", "label": "a"}\n{"text": "caf\u00e9", "label": "a"}\n', encoding="latin-1")
    with pytest.raises(DataError, match=r"latin.jsonl:2: byte 42"):
        read_source(str(tmp_path / "latin.jsonl"))
    write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match="empty"):
        read_source(str(tmp_path / "empty.csv"))
    with pytest.raises(DataError, match="did you mean the bundled set 'bbc-news'"):
        read_source("bbc-new")


def test_bundled_sets_by_name() -> None:
    bbc = read_source("bbc-news")
    assert len(bbc) == 2225
    assert sorted(set(bbc["label"])) == ["business", "entertainment", "politics", "sport", "tech"]
    tweets = read_source("tweet-sentiment")
    assert len(tweets) > 30000
    assert set(tweets["label"]) == {"negative", "neutral", "positive"}


def test_labels_as_ids_map_to_names(tmp_path: Path) -> None:
    rows = "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20))
    spec = DataSpec(train=str(write(tmp_path / "ids.csv", rows)), labels=["neg", "pos"])
    prepared = prepare(spec, seed=0)
    assert prepared.labels == ["neg", "pos"]
    assert set(prepared.splits["train"]["label"]) == {"neg", "pos"}


def test_labels_inferred_numerically(tmp_path: Path) -> None:
    rows = "text,label\n" + "".join(f"t{i},{i % 11}\n" for i in range(66))
    prepared = prepare(DataSpec(train=str(write(tmp_path / "ids.csv", rows))), seed=0)
    assert prepared.labels == [str(i) for i in range(11)]


def test_empty_text_is_an_error_with_file_and_row(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "text,label\nfine,a\n   ,a\nok,b\n" + "x,a\ny,b\nz,b\n" * 2)
    prepared = prepare(DataSpec(train=str(path)), seed=0)
    [finding] = [f for f in prepared.errors if f.check == "empty-text"]
    assert finding.count == 1 and finding.examples[0].endswith("t.csv:3")


def test_unknown_label_in_given_test_split(tmp_path: Path) -> None:
    train = balanced_csv(tmp_path / "train.csv")
    val = write(tmp_path / "val.csv", "review,sentiment\nnice one,pos\nawful one,neg\n")
    test = write(tmp_path / "test.csv", "review,sentiment\ngood,pos\nmeh,neutral\n")
    spec = DataSpec(train=str(train), validation=str(val), test=str(test), text_column="review", label_column="sentiment")
    prepared = prepare(spec, seed=0)
    [finding] = prepared.errors
    assert finding.check == "unknown-label"
    assert finding.examples == [f"{test}:3 (label 'neutral')"]


def test_class_too_small_to_split(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},big\n" for i in range(20)) + "rare one,tiny\n")
    prepared = prepare(DataSpec(train=str(path)), seed=0)
    [finding] = [f for f in prepared.errors if f.check == "class-too-small-to-split"]
    assert "class 'tiny': 1 example(s)" in finding.examples[0] and "t.csv:22" in finding.examples[0]


def test_force_drops_unusable_rows_and_records_them(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(30)) + "x,\n")
    prepared = prepare(DataSpec(train=str(path)), seed=0, force=True)
    dropped = [f for f in prepared.findings if f.check == "forced-drop"]
    assert dropped and dropped[0].examples == [f"{path}:32"]
    assert sum(len(ds) for ds in prepared.splits.values()) == 30


def test_stratified_split_and_given_splits_respected(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{'a' if i < 80 else 'b'}\n" for i in range(100)))
    prepared = prepare(DataSpec(train=str(path)), seed=0)
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    assert sizes == {"train": 80, "validation": 10, "test": 10}
    for ds in prepared.splits.values():  # each split keeps the 80/20 class ratio
        assert list(ds["label"]).count("b") / len(ds) == pytest.approx(0.2)
    all_locations = [loc for ds in prepared.splits.values() for loc in ds["location"]]
    assert len(set(all_locations)) == 100  # disjoint and complete
    again = prepare(DataSpec(train=str(path)), seed=0)
    assert list(again.splits["test"]["location"]) == list(prepared.splits["test"]["location"])
    other = write(tmp_path / "test.csv", "text,label\n" + "".join(f"u{i},{'a' if i < 16 else 'b'}\n" for i in range(20)))
    given = prepare(DataSpec(train=str(path), test=str(other)), seed=0)
    assert len(given.splits["test"]) == 20 and len(given.splits["validation"]) == 10
    leaky = prepare(DataSpec(train=str(path), test=str(path)), seed=0)  # the same file twice is leakage
    assert [f.check for f in leaky.errors] == ["leakage"]


def test_limit_takes_stratified_sample() -> None:
    prepared = prepare(DataSpec(train="bbc-news", limit=100), seed=0)
    assert sum(len(ds) for ds in prepared.splits.values()) == 100
    assert len(set(prepared.splits["test"]["label"])) == 5


def test_multi_label_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", "".join(json.dumps({"text": f"t{i}", "label": ["a", "b"][: 1 + i % 2]}) + "\n" for i in range(30)))
    prepared = prepare(DataSpec(train=str(path), multi_label=True), seed=0)
    assert prepared.labels == ["a", "b"]
    assert not prepared.errors
    csv_path = write(tmp_path / "m.csv", "text,label\nx,a|b\ny,b\n")
    assert list(read_source(str(csv_path), multi_label=True)["label"]) == [["a", "b"], ["b"]]


def test_unexpected_columns_are_noted(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "id,body,label,notes\n" + "".join(f"{i},text {i},{'ab'[i % 2]},n\n" for i in range(30)))
    prepared = prepare(DataSpec(train=str(path), text_column="body"), seed=0)
    [finding] = [f for f in prepared.findings if f.check == "unexpected-columns"]
    assert finding.severity == "info" and finding.examples == [f"{path}: ['id', 'notes']"]


def test_auto_split_keeps_duplicates_on_the_training_side(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(60)) + "".join(f"Text {i}!,{'ab'[i % 2]}\n" for i in range(20))
    path = write(tmp_path / "dups.csv", "text,label\n" + rows)
    prepared = prepare(DataSpec(train=str(path)), seed=0)
    from tunelab.data.dedup import normalize_text

    train = {normalize_text(t) for t in prepared.splits["train"]["text"]}
    for name in ("validation", "test"):
        assert not train & {normalize_text(t) for t in prepared.splits[name]["text"]}
    assert sum(len(ds) for ds in prepared.splits.values()) == 80  # nothing dropped
    assert any(f.check == "split-duplicates-kept-in-train" for f in prepared.findings)
