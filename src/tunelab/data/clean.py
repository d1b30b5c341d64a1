"""`tunelab data clean`: apply the safe fixes and record every change.

Safe means a fix no reasonable user would undo: repairing mojibake and control characters, dropping empty
texts and rows without a label (training cannot use them), dropping exact duplicates that carry the same
label, dropping validation/test rows that repeat an earlier split, exactly or near-identically (leakage: the
rows the doctor's leakage check names, found by that check's own code and threshold, so after cleaning the
check passes), and (on request) replacing personal data with typed placeholders. Label-noise suspects and
near-duplicates within a split are reported by `data check` but never changed automatically.

Chat files in OpenAI's `messages` form are cleaned too: each message's text is repaired, and leakage is
judged on the conversation's joined text, as the doctor judges it.

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

import datasets

from tunelab.data.checks.dedup import PARAMS
from tunelab.data.checks.text import fix_mojibake, strip_control
from tunelab.data.dedup import normalize_text
from tunelab.data.findings import SPLIT_ORDER
from tunelab.data.lm_data import conversation_text
from tunelab.data.pii import redact
from tunelab.data.sources import BUNDLED_DATA, DataError, _rows
from tunelab.run.files import write_text


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


def _text_of(record: dict[str, Any], key: str, location: str) -> tuple[str, bool]:
    """(the text the doctor sees, is it a chat record). A record without the text has no safe fix: an error."""
    if key in record:
        return ("" if record[key] is None else str(record[key])), False
    if isinstance(record.get("messages"), list):
        return conversation_text(record), True
    raise DataError(f"{location}: no '{key}' column (the record has {sorted(record)}); pass --text-column, or point "
                    "data.text_column at the text. `data clean` cleans text and chat data, not image tables")


def _clean_record(record: dict[str, Any], key: str, chat: bool, opts: CleanOptions) -> tuple[str, list[str]]:
    """Repair RECORD in place (its text, or each chat message's text); the new text and the reasons."""
    if not chat:
        text, reasons = _clean_text("" if record[key] is None else str(record[key]), opts)
        record[key] = text
        return text, reasons
    reasons: list[str] = []
    messages = [dict(m) if isinstance(m, dict) else m for m in record["messages"]]
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message["content"], why = _clean_text(message["content"], opts)
            reasons += [r for r in why if r not in reasons]
    record["messages"] = messages
    return conversation_text(record), reasons


def _leakage(kept: dict[str, list[tuple[str, dict[str, Any], str]]]) -> dict[tuple[str, str], str]:
    """(split, location) -> reason, for every row the doctor's leakage check would name in the cleaned splits."""
    from tunelab.data.checks.dedup import leaks
    from tunelab.data.doctor import DoctorContext

    splits = {split: datasets.Dataset.from_dict({"text": [t for _, _, t in rows], "label": [None] * len(rows),
                                                 "location": [loc for loc, _, _ in rows]})
              for split, rows in kept.items()}
    found = {}
    for leak in leaks(DoctorContext(splits=splits, labels=[])):
        how = ("the same text is" if leak.exact
               else f"a near-identical text (similarity {leak.similarity:.2f}, threshold {PARAMS.threshold}) is")
        found[(leak.split, leak.location)] = f"leakage: {how} in {leak.repeats_split} at {leak.repeats_location}"
    return found


def clean(sources: dict[str, str], out_dir: Path, opts: CleanOptions) -> CleanResult:
    """Clean each split's source; then drop the validation/test rows that repeat an earlier split (leakage)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = CleanResult()
    kept: dict[str, list[tuple[str, dict[str, Any], str]]] = {}  # split -> (location, record, text)
    for split in sorted(sources, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER)):
        seen: dict[tuple[str, str], str] = {}
        kept[split] = []
        for location, record in _rows(sources[split]):
            result.rows_in += 1
            record = dict(record)
            text_key = "text" if sources[split] in BUNDLED_DATA else opts.text_column
            original, chat = _text_of(record, text_key, location)
            text, reasons = _clean_record(record, text_key, chat, opts)
            norm = normalize_text(text)
            labelled = bool(opts.label_column) and opts.label_column in record
            label = "" if not labelled or record[opts.label_column] is None else str(record[opts.label_column])
            drop = None
            if not chat and not text.strip():
                drop = "empty text"
            elif labelled and not label.strip():
                drop = "no label (training cannot use the row; label it to keep it)"
            elif opts.drop_duplicates and (norm, label) in seen:
                drop = f"exact duplicate (same label) of {seen[(norm, label)]}"
            if drop:
                result.dropped += 1
                result.changes.append({"split": split, "location": location, "action": "dropped", "reason": drop})
                continue
            seen.setdefault((norm, label), location)
            if reasons:
                result.changed += 1
                change = {"split": split, "location": location, "action": "changed", "reason": "; ".join(reasons)}
                if not opts.redact_pii and not chat:  # never copy personal data into the log
                    change.update(before=original, after=text)
                result.changes.append(change)
            kept[split].append((location, record, text))
    leaked = _leakage(kept) if opts.drop_duplicates and len(kept) > 1 else {}
    for split, rows in kept.items():
        records = []
        for location, record, _ in rows:
            if (split, location) in leaked:
                result.dropped += 1
                result.changes.append({"split": split, "location": location, "action": "dropped",
                                       "reason": leaked[(split, location)]})
            else:
                records.append(record)
        target = _output_path(sources[split], out_dir)
        _write_rows(target, records)
        result.outputs[split] = str(target)
        result.rows_out += len(records)
    write_text(out_dir / "changes.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in result.changes))
    return result


def write_clean_spec(spec_path: Path, outputs: dict[str, str], out_dir: Path) -> Path:
    """A copy of the spec at SPEC_PATH whose data.train/validation/test are the cleaned OUTPUTS (in OUT_DIR), so
    `tunelab train OUT_DIR/<spec>` trains on exactly what was cleaned. Everything else in the spec is kept."""
    import yaml

    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    raw.setdefault("data", {}).update({split: str(Path(path).resolve()) for split, path in outputs.items()})
    if "name" not in raw:
        raw["name"] = f"{spec_path.stem}-clean"
    target = out_dir / spec_path.name
    write_text(target, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return target
