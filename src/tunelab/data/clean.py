"""`tunelab data clean`: apply the safe fixes and record every change.

Safe means a fix no reasonable user would undo: repairing mojibake and control characters, dropping empty
texts, dropping exact duplicates that carry the same label, dropping validation/test rows that also appear
in train (leakage), and (on request) replacing personal data with typed placeholders. Label-noise suspects
and near-duplicates are reported by `data check` but never changed automatically.

Input files are never overwritten: cleaned copies go to a new folder with `changes.jsonl`, one line per
dropped or changed row with its reason, so `rows in = rows out + dropped` can always be audited.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.run.files import write_text
from tunelab.data.checks.text import fix_mojibake, strip_control
from tunelab.data.dedup import normalize_text
from tunelab.data.pii import redact
from tunelab.data.sources import BUNDLED_DATA, DataError, _rows


@dataclass
class CleanOptions:
    text_column: str = "text"
    label_column: str | None = "label"
    fix_text: bool = True
    drop_duplicates: bool = True
    redact_pii: bool = False


@dataclass
class CleanResult:
    outputs: dict[str, str] = field(default_factory=dict)  # split -> cleaned file
    rows_in: int = 0
    rows_out: int = 0
    dropped: int = 0
    changed: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)


def _clean_text(text: str, opts: CleanOptions) -> tuple[str, list[str]]:
    reasons = []
    if opts.fix_text:
        fixed = strip_control(fix_mojibake(text))
        if fixed != text:
            reasons.append("repaired mojibake / control characters")
            text = fixed
    if opts.redact_pii:
        redacted, matches = redact(text)
        if matches:
            reasons.append("redacted personal data: " + ", ".join(sorted({m.kind for m in matches})))
            text = redacted
    return text, reasons


def _output_path(source: str, out_dir: Path) -> Path:
    if source in BUNDLED_DATA:
        return out_dir / f"{source}.jsonl"
    path = Path(source)
    target = out_dir / path.name
    if target.resolve() == path.resolve():
        raise DataError(f"{out_dir}: is the input's own folder; choose another --out (inputs are never overwritten)")
    return target


def _write_rows(path: Path, records: list[dict[str, Any]]) -> None:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        buf = io.StringIO()
        header = list(records[0]) if records else []
        writer = csv.DictWriter(buf, fieldnames=header, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(records)
        write_text(path, buf.getvalue())
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif suffix in (".jsonl", ".json"):
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:  # a datasets folder
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))


def clean(sources: dict[str, str], out_dir: Path, opts: CleanOptions) -> CleanResult:
    """Clean each split's source (train first, so leakage into validation/test can be dropped)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = CleanResult()
    train_seen: dict[str, str] = {}
    for split in sorted(sources, key=lambda s: s != "train"):
        seen: dict[tuple[str, str], str] = {}
        kept: list[dict[str, Any]] = []
        for location, record in _rows(sources[split]):
            result.rows_in += 1
            record = dict(record)
            text_key = "text" if sources[split] in BUNDLED_DATA else opts.text_column
            original = "" if record.get(text_key) is None else str(record[text_key])
            text, reasons = _clean_text(original, opts)
            norm = normalize_text(text)
            label = str(record.get(opts.label_column, "")) if opts.label_column else ""
            drop = None
            if not text.strip():
                drop = "empty text"
            elif opts.drop_duplicates and (norm, label) in seen:
                drop = f"exact duplicate (same label) of {seen[(norm, label)]}"
            elif opts.drop_duplicates and split != "train" and norm in train_seen:
                drop = f"leakage: the same text is in train at {train_seen[norm]}"
            if drop:
                result.dropped += 1
                result.changes.append({"split": split, "location": location, "action": "dropped", "reason": drop})
                continue
            seen.setdefault((norm, label), location)
            if split == "train":
                train_seen.setdefault(norm, location)
            if reasons:
                result.changed += 1
                change = {"split": split, "location": location, "action": "changed", "reason": "; ".join(reasons)}
                if not opts.redact_pii:  # never copy personal data into the log
                    change.update(before=original, after=text)
                result.changes.append(change)
                record[text_key] = text
            kept.append(record)
        target = _output_path(sources[split], out_dir)
        _write_rows(target, kept)
        result.outputs[split] = str(target)
        result.rows_out += len(kept)
    write_text(out_dir / "changes.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in result.changes))
    return result
