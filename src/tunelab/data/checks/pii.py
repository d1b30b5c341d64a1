"""Doctor check `personal-data`: e-mail addresses, phones, cards, IBANs, IPs and national IDs in the texts.

Personal data in training texts can be memorised and reproduced by the model, and a model card that
says "trained on customer tickets" should not hide that those tickets held card numbers. The check
reports one finding per kind so each can be judged on its own (IP addresses in server logs may be
fine; card numbers never are). Reports only ever show masked values: the doctor's output is pasted
into issues and CI logs, so printing the raw value would leak it a second time.

Speed matters because the doctor runs before every training: the prefilter runs over each whole Arrow
column in C++ (RE2 via pyarrow.compute), and only the rows it keeps go through the Python detectors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets

from tunelab.data.findings import MAX_EXAMPLES, DoctorContext, Finding, register_check
from tunelab.data.pii import KINDS, PREFILTER, PREFILTER_RE, find_pii, mask

_NAMES = {"EMAIL": "e-mail address(es)", "PHONE": "phone number(s)", "CARD": "payment card number(s)",
          "IBAN": "IBAN(s)", "IP": "IP address(es)", "NATIONAL_ID": "national ID number(s)"}
FIX = ("personal data in training texts can be memorised and repeated by the model: remove these rows, or run "
       "`tunelab data clean --redact-pii` to replace each value with a typed placeholder such as [EMAIL]")


@dataclass
class _Tally:
    """What one kind of personal data adds up to across the splits."""

    texts: int = 0
    matches: int = 0
    by_split: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, int, str]] = field(default_factory=list)  # (split, row, masked value)
    rows: list[tuple[str, int]] = field(default_factory=list)  # (split, row) of every text holding this kind


def candidate_rows(texts: Any) -> tuple[list[int], list[str]]:
    """Row numbers and texts of the rows that could hold personal data (the rest cannot).

    TEXTS is a pyarrow (Chunked)Array or a list of str. The Arrow path runs the prefilter in C++ over
    the whole column; the list path (or an Arrow build without RE2) runs it row by row in Python.
    """
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            hit = pc.fill_null(pc.match_substring_regex(texts, PREFILTER), False)
            rows = pc.indices_nonzero(hit)
            return rows.to_pylist(), texts.take(rows).to_pylist()
    except (ImportError, NotImplementedError):  # ArrowNotImplementedError subclasses NotImplementedError
        pass  # deliberate: fall through to the pure-Python prefilter below
    values = texts.to_pylist() if hasattr(texts, "to_pylist") else list(texts)
    search = PREFILTER_RE.search
    rows_py = [i for i, t in enumerate(values) if t and search(t)]
    return rows_py, [values[i] for i in rows_py]


def scan_split(name: str, ds: datasets.Dataset, tallies: dict[str, _Tally]) -> None:
    """Add the personal data found in split NAME to TALLIES (one per kind)."""
    if "text" not in ds.column_names or len(ds) == 0:
        return
    rows, texts = candidate_rows(ds.with_format("arrow")["text"])
    for row, text in zip(rows, texts):
        matches = find_pii(text)
        if not matches:
            continue
        for kind, n in Counter(m.kind for m in matches).items():
            tally = tallies.setdefault(kind, _Tally())
            tally.texts += 1
            tally.matches += n
            tally.by_split[name] += n
            tally.rows.append((name, row))
        for m in matches:
            tally = tallies[m.kind]
            if len(tally.examples) < MAX_EXAMPLES:
                tally.examples.append((name, row, mask(m.value, m.kind)))


def _locations(ds: datasets.Dataset, rows: list[int]) -> dict[int, str]:
    """Locations of ROWS only: reading the whole location column of a large split would cost more."""
    if "location" not in ds.column_names:
        return {row: f"row {row}" for row in rows}
    column = ds.with_format("arrow")["location"].take(rows).to_pylist()
    return {row: str(loc) for row, loc in zip(rows, column)}


@register_check("personal-data", "warning")
def personal_data(ctx: DoctorContext) -> list[Finding] | None:
    """One warning per kind of personal data found in any split, with masked examples."""
    tallies: dict[str, _Tally] = {}
    for name, ds in ctx.splits.items():
        scan_split(name, ds, tallies)
    if not tallies:
        return None
    by_kind = {kind: {"texts": t.texts, "matches": t.matches, "by_split": dict(t.by_split)}
               for kind, t in tallies.items()}
    wanted: dict[str, list[int]] = {}
    for tally in tallies.values():
        for split, row in tally.rows:
            wanted.setdefault(split, []).append(row)
    where = {split: _locations(ctx.splits[split], sorted(set(rows))) for split, rows in wanted.items()}
    findings = []
    for kind in (k for k in KINDS if k in tallies):
        tally = tallies[kind]
        splits = ", ".join(f"{s}: {n}" for s, n in tally.by_split.items())
        examples = [f"{where[s][row]}: {masked}" for s, row, masked in tally.examples]
        findings.append(Finding(
            "personal-data", "warning",
            f"{tally.matches} {_NAMES[kind]} in {tally.texts} text(s) ({splits})",
            tally.matches, FIX, examples, {"kind": kind, "texts": tally.texts, "by_kind": by_kind},
            locations=[where[s][row] for s, row in tally.rows]))
    return findings
