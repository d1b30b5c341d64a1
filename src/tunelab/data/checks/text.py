"""Text-quality checks: very short texts, texts the model would truncate, mojibake, control characters.

These find data that reads fine to a loader but badly to a model: a 2-word text carries little signal,
a truncated one loses its end, `donâ€™t` is a different token sequence from `don't`, and a NUL byte
or a run of U+FFFD means the file was decoded wrongly. Each check scans every split and points at rows
by their location. They are written to stay fast on a million texts: the character scans run one regex
over all texts joined together instead of one call per text, and ftfy only looks at non-ASCII texts.

`fix_mojibake` and `strip_control` are the repairs the clean command applies (mojibake first: repairing
the encoding turns the C1 controls inside `â\\x80\\x99` back into a quote before they would be stripped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import datasets
import ftfy
import ftfy.badness
import numpy as np

from tunelab.data.findings import MAX_EXAMPLES, DoctorContext, Finding, column, register_check, sample

MIN_WORDS = 3
TOKENIZE_SAMPLE = 200_000  # above this many texts, too-long measures a seeded sample
TOKENIZE_BATCH = 10_000
HISTOGRAM_BINS = 20
GARBAGE_SHARE = 0.3  # a text at least this non-printable is binary garbage, not a text with a stray byte
SEED = 0
SCAN_CHUNK = 100_000  # texts joined per regex pass

# C0 controls except \t \n \r, DEL, C1 controls, and U+FFFD (what a failed decode leaves behind).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_NON_ASCII = re.compile("[^\x00-\x7f]")
_SEPARATOR = "\n"  # joins texts for the bulk scans; it matches neither pattern above


def fix_mojibake(text: str) -> str:
    """TEXT with UTF-8-read-as-Latin-1/cp1252 damage undone (`donâ€™t` -> `don’t`), nothing else changed.

    Only ftfy's encoding repair runs: quote style, width and line breaks are the user's business.
    """
    return ftfy.fix_encoding(text)


def strip_control(text: str) -> str:
    """TEXT without control characters (except tab and line breaks), NUL bytes or U+FFFD."""
    return _CONTROL.sub("", text)


def _texts(ctx: DoctorContext) -> Iterator[tuple[str, datasets.Dataset, list[str]]]:
    for name, ds in ctx.splits.items():
        if len(ds):
            yield name, ds, column(ds, "text")


def _locations(ds: datasets.Dataset, indices: list[int]) -> list[str]:
    """Locations of INDICES only: reading the whole location column would cost as much as the texts."""
    return column(ds.select(indices), "location") if indices else []


def _rows_matching(texts: list[str], pattern: re.Pattern[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, matches per row) for rows where PATTERN matches.

    One regex pass over joined texts instead of a call per text; joined in chunks, because one emoji makes
    Python store a whole string at 4 bytes a character.
    """
    rows: list[np.ndarray] = []
    for first in range(0, len(texts), SCAN_CHUNK):
        chunk = texts[first:first + SCAN_CHUNK]
        starts = np.cumsum([0] + [len(t) + 1 for t in chunk[:-1]])
        positions = np.fromiter((m.start() for m in pattern.finditer(_SEPARATOR.join(chunk))), dtype=np.int64)
        rows.append(first + np.searchsorted(starts, positions, side="right") - 1)
    return np.unique(np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64), return_counts=True)


def _flagged(check: str, severity: str, message: str, fix: str, hits: list[tuple[str, str]],
             total: int, **details: Any) -> Finding:
    """A Finding for HITS, (location, example text) pairs, with their share of TOTAL texts."""
    return Finding(check, severity, message, len(hits), fix,  # type: ignore[arg-type]
                   sample([f"{loc}: {text}" if text else loc for loc, text in hits]),
                   {"share": round(len(hits) / max(total, 1), 6), **details}, locations=[loc for loc, _ in hits])


def _clip(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "…")


@register_check("too-short", "warning")
def too_short(ctx: DoctorContext) -> Finding | None:
    """Texts of 1-2 words: little for a model to learn from, often a header or a stray cell."""
    hits: list[tuple[str, str]] = []
    total = 0
    for _, ds, texts in _texts(ctx):
        total += len(texts)
        idx = [i for i, t in enumerate(texts) if 0 < len(t.split(None, MIN_WORDS - 1)) < MIN_WORDS]
        hits += zip(_locations(ds, idx), (_clip(texts[i].strip()) for i in idx))
    if not hits:
        return None
    return _flagged("too-short", "warning", f"{len(hits)} text(s) have fewer than {MIN_WORDS} words",
                    "check they are real examples (not headers or stray cells); drop them if not", hits, total,
                    min_words=MIN_WORDS)


def _token_lengths(tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Token counts with special tokens, in batches, nothing truncated.

    A fast tokenizer's Rust backend is called directly when it has no truncation or padding set (almost
    twice as fast as `tokenizer(...)`, which builds id lists); otherwise the ordinary call is used.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = backend is not None and backend.truncation is None and backend.padding is None
    encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    lengths: list[int] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = texts[start:start + TOKENIZE_BATCH]
        if direct and encode is not None:
            lengths += [len(e) for e in encode(batch, add_special_tokens=True)]
        else:
            enc = tokenizer(batch, add_special_tokens=True, truncation=False, return_attention_mask=False,
                            return_token_type_ids=False, return_length=True, verbose=False)
            lengths += enc["length"] if "length" in enc else [len(ids) for ids in enc["input_ids"]]
    return np.asarray(lengths, dtype=np.int64)


@register_check("too-long", "warning")
def too_long(ctx: DoctorContext) -> Finding | None:
    """Texts longer than max_length tokens: the model never sees their end, so say how many and how long."""
    if ctx.tokenizer is None or not ctx.max_length:
        return None
    texts: list[str] = []
    owners: list[tuple[datasets.Dataset, int]] = []  # (split, first index) to find a sampled row's location
    for _, ds, split_texts in _texts(ctx):
        owners.append((ds, len(texts)))
        texts += split_texts
    total = len(texts)
    if not total:
        return None
    sampled = total > TOKENIZE_SAMPLE
    rows = (np.sort(np.random.default_rng(SEED).choice(total, TOKENIZE_SAMPLE, replace=False)) if sampled
            else np.arange(total))
    lengths = _token_lengths(ctx.tokenizer, [texts[i] for i in rows])
    over = np.flatnonzero(lengths > ctx.max_length)
    if not len(over):
        return None
    share = len(over) / len(rows)
    count = round(share * total) if sampled else len(over)
    longest = over[np.argsort(-lengths[over], kind="stable")][:MAX_EXAMPLES]

    def locations(rows_: list[int]) -> list[str]:
        """Locations of global ROWS_, read one split at a time."""
        found: dict[int, str] = {}
        for (ds, first), (_, end) in zip(owners, owners[1:] + [(None, total)]):
            mine = [r for r in rows_ if first <= r < end]
            found.update(zip(mine, _locations(ds, [r - first for r in mine])))
        return [found[r] for r in rows_]

    edges = np.unique(np.round(np.geomspace(1, lengths.max() + 1, HISTOGRAM_BINS + 1), 1))
    counts, edges = np.histogram(lengths, bins=edges)
    pct = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)}
    note = f" (estimated from a sample of {len(rows):,} of {total:,} texts)" if sampled else ""
    return Finding(
        "too-long", "warning",
        f"{'~' if sampled else ''}{count} text(s) ({share:.1%}) are longer than max_length={ctx.max_length} "
        f"tokens and will be truncated; the longest has {int(lengths.max())} tokens{note}",
        count, "raise max_length (slower), or split long texts / put the informative part first",
        [f"{loc}: {int(lengths[i])} tokens" for loc, i in zip(locations([int(rows[i]) for i in longest]), longest)],
        {"max_length": ctx.max_length, "share": round(share, 6), "longest": int(lengths.max()),
         "percentiles": {**pct, "max": int(lengths.max())},
         "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
         "sampled": sampled, "measured": int(len(rows)), "total": total},
        locations=locations(sorted(int(rows[i]) for i in over)))


@register_check("mojibake", "warning")
def mojibake(ctx: DoctorContext) -> Finding | None:
    """UTF-8 read as Latin-1/cp1252 (`Ã©`, `â€™`): the model would learn the garbled form."""
    hits: list[tuple[str, str]] = []
    total = repairable = 0
    for _, ds, texts in _texts(ctx):
        total += len(texts)
        candidates, _ = _rows_matching(texts, _NON_ASCII)  # pure-ASCII text cannot be mojibake
        idx, shown = [], []
        for i in candidates.tolist():
            text = texts[i]
            fixed = fix_mojibake(text)
            if fixed != text or ftfy.badness.is_bad(text):
                reliable = fixed != text and not ftfy.badness.is_bad(fixed)  # a partial repair misleads
                repairable += reliable
                idx.append(i)
                shown.append(_example_fix(text, fixed if reliable else None))
        hits += zip(_locations(ds, idx), shown)
    if not hits:
        return None
    return _flagged("mojibake", "warning",
                    f"{len(hits)} text(s) look mis-decoded (mojibake such as 'Ã©' or 'â€™'); "
                    f"{repairable} can be repaired automatically",
                    "re-read the file with the right encoding (usually UTF-8), or repair the texts with "
                    "ftfy (the clean command does this)", hits, total, repairable=repairable)


def _example_fix(text: str, fixed: str | None, width: int = 60) -> str:
    """`'…donâ€™t…' -> '…don’t…'` around the first damaged character, so the example shows the damage."""
    if fixed is None:
        start = next(m.start() for m in _NON_ASCII.finditer(text))
    else:
        start = next((i for i, (a, b) in enumerate(zip(text, fixed)) if a != b), min(len(text), len(fixed)))
    lo = max(0, start - width // 3)
    cut = lambda s: ("…" if lo else "") + s[lo:lo + width] + ("…" if len(s) > lo + width else "")
    return f"{cut(text)!r} -> {cut(fixed)!r}" if fixed is not None else f"{cut(text)!r} (no reliable repair)"


@register_check("control-characters", "warning")
def control_characters(ctx: DoctorContext) -> list[Finding] | None:
    """Control characters, NUL bytes, U+FFFD: a stray one is noise; a text made of them is binary garbage.

    Counted after mojibake repair, so the C1 bytes of a mis-decoded `â\x80\x99` are reported once, as mojibake.
    """
    stray: list[tuple[str, str]] = []
    garbage: list[tuple[str, str]] = []
    total = 0
    for _, ds, texts in _texts(ctx):
        total += len(texts)
        rows, _ = _rows_matching(texts, _CONTROL)
        found: dict[str, list[int]] = {"stray": [], "garbage": []}
        for i in rows.tolist():
            repaired = fix_mojibake(texts[i])  # a mis-decoded quote's C1 bytes are mojibake, reported there
            n = len(_CONTROL.findall(repaired))
            if n:
                found["garbage" if n >= GARBAGE_SHARE * len(repaired) else "stray"].append(i)
        for bucket, idx in ((stray, found["stray"]), (garbage, found["garbage"])):
            bucket += zip(_locations(ds, idx), (_describe_controls(texts[i]) for i in idx))
    findings = []
    if garbage:
        findings.append(_flagged(
            "control-characters", "error",
            f"{len(garbage)} text(s) are mostly non-printable (at least {GARBAGE_SHARE:.0%} control or "
            "replacement characters): binary data, or a file read with the wrong encoding",
            "check how these rows were exported; remove them if they are not text", garbage, total, binary=True))
    if stray:
        findings.append(_flagged(
            "control-characters", "warning",
            f"{len(stray)} text(s) contain control characters, NUL bytes or U+FFFD replacement characters",
            "strip them (the clean command does), and check the file's encoding if U+FFFD appears",
            stray, total, binary=False))
    return findings or None


def _describe_controls(text: str) -> str:
    found = sorted(set(_CONTROL.findall(text)))
    names = ", ".join(f"U+{ord(c):04X}" for c in found[:4]) + (", …" if len(found) > 4 else "")
    return f"{names} in {_clip(strip_control(text), 40)}"
