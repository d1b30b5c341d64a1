"""--feedback: user-corrected labels become a retraining spec (the run's spec, its training data plus them).

The combined training file keeps the original's format and columns (CSV stays CSV with every column, JSONL
stays JSONL, Parquet stays Parquet); bundled sets and `datasets` folders are written as JSONL. The spec is
the run's own spec with `name: <run>-retrain` and `data.train` pointing at the combined file, checked with
`load_spec` before anything is reported.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tunelab.data import DataError, read_source
from tunelab.data.sources import BUNDLED_DATA, source_columns

WRITABLE = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def read_feedback(path: Path, spec: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Feedback rows as {text, label, location}; every empty or unknown label is an error naming its row."""
    if not Path(path).is_file():
        raise DataError(f"{path}: feedback file not found")
    columns = source_columns(str(path))
    text_col = spec.data.text_column if spec.data.text_column in columns else "text"
    label_col = spec.data.label_column if spec.data.label_column in columns else "label"
    ds = read_source(str(path), text_col, label_col, spec.data.multi_label, spec.data.label_separator)
    known = set(labels)
    by_id = dict(enumerate(spec.data.labels)) if spec.data.labels else {}
    problems, rows = [], []
    for text, value, location in zip(ds["text"], ds["label"], ds["location"]):
        values = value if isinstance(value, list) else [value]
        values = [by_id.get(int(v), v) if v is not None and v not in known and v.lstrip("-").isdigit() else v
                  for v in values]
        if not text.strip():
            problems.append(f"{location}: empty text")
        if not values or any(v is None for v in values):
            problems.append(f"{location}: no label")
            continue
        unknown = [v for v in values if v not in known]
        if unknown:
            problems.append(f"{location}: unknown label {', '.join(repr(v) for v in unknown)}; "
                            f"this run's labels are {', '.join(labels)}")
            continue
        rows.append({"text": text, "label": values if spec.data.multi_label else values[0], "location": location})
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"{path}: {len(problems)} feedback row(s) cannot be used:\n"
                        + "\n".join(f"  {p}" for p in problems[:10]) + more)
    return rows


def _raw_records(source: str) -> list[dict[str, Any]]:
    from tunelab.data.sources import _rows  # the readers' raw records: every column, as the file has it

    return [record for _, record in _rows(source)]


def _cell(label: Any, spec: Any, delimited: bool) -> Any:
    if isinstance(label, list):
        return spec.data.label_separator.join(label) if delimited else label
    return label


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from tunelab.run.files import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def _write_delimited(path: Path, records: list[dict[str, Any]], delimiter: str) -> None:
    import io

    from tunelab.run.files import write_text

    header = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=header, delimiter=delimiter, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text(path, buf.getvalue())


def combined_training_data(spec: Any, rows: list[dict[str, Any]], folder: Path) -> tuple[Path, str, int]:
    """Write the run's training source plus ROWS to FOLDER/retrain_data.<ext>; (path, format, original rows)."""
    train = spec.data.train
    text_col, label_col = spec.data.text_column, spec.data.label_column
    suffix = Path(train).suffix.lower()
    is_file = train not in BUNDLED_DATA and Path(train).is_file() and suffix in WRITABLE
    if not is_file:  # bundled set or datasets folder: the canonical rows, as JSONL with the spec's columns
        ds = read_source(train, text_col, label_col, spec.data.multi_label, spec.data.label_separator)
        original = [{text_col: t, label_col: lab} for t, lab in zip(ds["text"], ds["label"])]
        path = folder / "retrain_data.jsonl"
        _write_jsonl(path, original + [{text_col: r["text"], label_col: r["label"]} for r in rows])
        return path, "jsonl", len(original)
    original = _raw_records(train)
    delimited = suffix in (".csv", ".tsv")
    extra = [{text_col: r["text"], label_col: _cell(r["label"], spec, delimited)} for r in rows]
    path = folder / f"retrain_data{suffix}"
    if delimited:
        _write_delimited(path, original + extra, "\t" if suffix == ".tsv" else ",")
        return path, suffix.lstrip("."), len(original)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(original + extra)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. integer label ids in the file, names in feedback
            path = folder / "retrain_data.jsonl"
            _write_jsonl(path, original + extra)
            return path, "jsonl", len(original)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path, "parquet", len(original)
    _write_jsonl(path, original + extra)
    return path, "jsonl", len(original)


def write_retrain_spec(run: Path, spec: Any, feedback: Path, folder: Path, labels: list[str]) -> dict[str, Any]:
    """Validate FEEDBACK, write the combined data and FOLDER/retrain.yaml; return what was written."""
    from tunelab.run.files import write_text
    from tunelab.spec import SpecError, dump_spec, load_spec

    rows = read_feedback(feedback, spec, labels)
    folder.mkdir(parents=True, exist_ok=True)
    data_path, fmt, n_original = combined_training_data(spec, rows, folder)
    retrain = spec.model_copy(deep=True)
    retrain.name = f"{Path(run).resolve().name}-retrain"
    retrain.data.train = str(data_path.resolve())
    retrain.output.dir = str(Path(run).resolve().parent)
    spec_path = folder / "retrain.yaml"
    write_text(spec_path, f"# Retraining spec written by `tunelab monitor --feedback {feedback}`: the spec of run\n"
                          f"# {Path(run).resolve()} with {len(rows)} user-corrected example(s) added to its "
                          f"training data.\n# Train it with: tunelab train {spec_path}\n" + dump_spec(retrain))
    try:
        checked = load_spec(spec_path)
    except SpecError as err:  # would mean the run's own spec no longer validates
        raise DataError(f"the retraining spec does not validate: {err}") from None
    notes = []
    if not (spec.data.validation and spec.data.test):
        notes.append("validation/test are split from the combined data, so the retrained run is scored on other "
                     "examples than this run; compare both on one file with `tunelab evaluate RUN --data FILE`")
    if spec.data.limit:
        notes.append(f"data.limit ({spec.data.limit}) samples the combined data; feedback rows may be left out")
    train_texts = set(list(read_source(str(data_path), spec.data.text_column, None)["text"])[:n_original])
    overlap = sum(r["text"] in train_texts for r in rows)
    if overlap:
        notes.append(f"{overlap} feedback text(s) also occur in the training data; the data check will report "
                     "conflicting labels when they disagree")
    return {"spec": str(spec_path), "data": str(data_path), "format": fmt, "name": checked.name,
            "rows_added": len(rows), "original_rows": n_original, "notes": notes}
