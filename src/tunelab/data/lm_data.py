"""Prepare data for the generative tasks (chat, completion): read, check, split.

The counterpart of `tunelab.data.prepare` for unlabelled data. The doctor runs first, on the raw
records (chat-format rules, with every bad row's location) and on a plain-text view of each example
(duplicates, train/test leakage, personal data, mojibake). Splits are random (there are no labels to
stratify by), seeded, and any text that also occurs in train stays on the training side.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import datasets

from tunelab.data import Prepared, file_fingerprint
from tunelab.data.checks.chat import CHAT_CHECKS
from tunelab.data.conversations import chat_dataset, read_chat_records, read_completion_texts
from tunelab.data.doctor import TEXT_ONLY_CHECKS, DoctorContext, Finding, run_checks
from tunelab.data.sources import Row

if TYPE_CHECKING:  # annotations only: at run time data needs nothing from the spec package
    from tunelab.spec import DataSpec

CHAT_TEXT_CHECKS = tuple(c for c in TEXT_ONLY_CHECKS if c not in ("empty-text", "too-short"))


def _usable_chat(record: Any) -> bool:
    """The minimum a chat record needs to be trained on (what --force keeps)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        return False
    ok = all(isinstance(m, dict) and isinstance(m.get("role"), str) and m.get("role") in
             ("system", "user", "assistant", "tool", "function") for m in messages)
    return ok and any(m.get("role") == "assistant" and m.get("content") for m in messages)


def conversation_text(record: Any) -> str:
    """A conversation's text as the text checks (duplicates, leakage, PII) and `data clean` see it: the
    string contents of its messages, joined by newlines."""
    messages = record.get("messages") if isinstance(record, dict) else None
    parts = [m.get("content") for m in messages or [] if isinstance(m, dict)]
    return "\n".join(p for p in parts if isinstance(p, str))


def _text_view(rows: list[Row]) -> datasets.Dataset:
    """One text per conversation for the text checks."""
    texts = [conversation_text(rec) for _, rec in rows]
    return datasets.Dataset.from_dict({"text": texts, "label": [None] * len(rows), "location": [loc for loc, _ in rows]})


def _random_split(n: int, shares: dict[str, float], seed: int) -> dict[str, list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: dict[str, list[int]] = {}
    start = 0
    for name, share in shares.items():
        k = max(1, round(share * n))
        out[name] = sorted(order[start:start + k])
        start += k
    out["train"] = sorted(order[start:])
    return out


def _sample(n: int, limit: int | None, seed: int) -> list[int]:
    if not limit or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def prepare_chat(spec: DataSpec, seed: int, force: bool = False, tokenizer: Any = None) -> Prepared:
    """Chat conversations per split (columns messages, location), with the doctor's findings."""
    given = {name: read_chat_records(src, spec.format) for name, src in
             (("train", spec.train), ("validation", spec.validation), ("test", spec.test)) if src}
    keep = _sample(len(given["train"]), spec.limit, seed)
    given["train"] = [given["train"][i] for i in keep]
    ctx = DoctorContext(splits={k: _text_view(v) for k, v in given.items()}, labels=[], tokenizer=tokenizer,
                        max_length=spec.max_length, records=given)
    findings = run_checks(ctx, only=CHAT_CHECKS + CHAT_TEXT_CHECKS)
    files = [file_fingerprint(src) for src in (spec.train, spec.validation, spec.test) if src and
             src != "construction-faq"]
    if any(f.severity == "error" for f in findings):
        if not force:
            return Prepared(splits={}, labels=[], findings=findings, files=files)
        dropped = [loc for rows in given.values() for loc, rec in rows if not _usable_chat(rec)]
        given = {k: [(loc, rec) for loc, rec in v if _usable_chat(rec)] for k, v in given.items()}
        if dropped:
            findings.append(Finding("forced-drop", "warning", f"--force: dropped {len(dropped)} conversation(s) "
                                    "that cannot be trained on", len(dropped), "fix them and rerun", dropped[:5],
                                    locations=dropped))
    return Prepared(splits=_split_rows(given, spec, seed, chat_dataset), labels=[], findings=findings, files=files)


def prepare_completion(spec: DataSpec, seed: int, force: bool = False, tokenizer: Any = None) -> Prepared:
    """Plain documents per split (columns text, location), with the doctor's findings."""
    given = {name: read_completion_texts(src, spec.text_column) for name, src in
             (("train", spec.train), ("validation", spec.validation), ("test", spec.test)) if src}
    given["train"] = given["train"].select(_sample(len(given["train"]), spec.limit, seed))
    views = {k: v.add_column("label", [None] * len(v)) for k, v in given.items()}
    findings = run_checks(DoctorContext(splits=views, labels=[]), only=TEXT_ONLY_CHECKS)
    files = [file_fingerprint(src) for src in (spec.train, spec.validation, spec.test) if src]
    if any(f.severity == "error" for f in findings):
        if not force:
            return Prepared(splits={}, labels=[], findings=findings, files=files)
        given = {k: v.filter(lambda r: bool(r["text"].strip())) for k, v in given.items()}
    rows = {k: list(zip(v["location"], v["text"])) for k, v in given.items()}
    to_ds = lambda rs: datasets.Dataset.from_dict({"text": [t for _, t in rs], "location": [loc for loc, _ in rs]})
    return Prepared(splits=_split_rows(rows, spec, seed, to_ds), labels=[], findings=findings, files=files)


def _split_rows(given: dict[str, list], spec: DataSpec, seed: int, to_dataset: Any) -> dict[str, datasets.Dataset]:
    """Carve validation/test out of train when they are not given; build Datasets."""
    shares = {name: getattr(spec.split, name) for name in ("validation", "test") if name not in given}
    splits = dict(given)
    if shares:
        train = given["train"]
        if len(train) < 3:
            from tunelab.data import DataError

            raise DataError(f"{spec.train}: {len(train)} example(s); at least 3 are needed to hold out validation "
                            "and test examples (or give data.validation and data.test)")
        parts = _random_split(len(train), shares, seed)
        splits = {**given, **{name: [train[i] for i in idx] for name, idx in parts.items()}}
    return {name: to_dataset(rows) for name, rows in splits.items()}
