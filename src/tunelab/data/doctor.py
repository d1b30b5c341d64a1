"""Data checks run before any compute is spent. One check is one registered function.

A check looks at the prepared splits and returns a Finding (or None). Errors stop training unless the
user forces it; warnings are reported. The registry is the extension point: a new check is one
function with `@register_check(...)`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import datasets

Severity = Literal["error", "warning", "info"]
MAX_EXAMPLES = 5


@dataclass
class Finding:
    check: str
    severity: Severity
    message: str
    count: int
    fix: str
    examples: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # check-specific numbers (histograms, ratios)

    def render(self) -> str:
        where = "".join(f"\n    at {e}" for e in self.examples)
        more = f"\n    ... and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return f"[{self.severity}] {self.check}: {self.message}{where}{more}\n    fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorContext:
    """What the checks see: labelled splits (before splitting when `needs_split`), and the label set.

    `splits` hold the canonical columns text / label / location. Optional inputs let more checks run:
    a tokenizer and max_length (token-length checks), raw records per split (chat-format checks),
    image paths per split (image checks). A check whose input is absent returns None.
    """

    splits: dict[str, datasets.Dataset]
    labels: list[str]
    multi_label: bool = False
    needs_split: bool = False
    min_per_class: int = 3
    tokenizer: Any = None
    max_length: int | None = None
    records: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    columns: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # split -> (source, its columns)
    used_columns: tuple[str, ...] = ("text", "label")


Check = Callable[[DoctorContext], "Finding | list[Finding] | None"]
CHECKS: dict[str, tuple[Severity, Check]] = {}


def register_check(name: str, severity: Severity) -> Callable[[Check], Check]:
    """Register a check under NAME; its findings carry SEVERITY."""

    def wrap(fn: Check) -> Check:
        CHECKS[name] = (severity, fn)
        return fn

    return wrap


def column(ds: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a list, through Arrow: `list(ds[name])` goes row by row (40 s for a million rows)."""
    return ds.with_format("arrow")[name].to_pylist()


def _labels_of(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@register_check("empty-text", "error")
def empty_text(ctx: DoctorContext) -> Finding | None:
    bad = [loc for ds in ctx.splits.values() for text, loc in zip(column(ds, "text"), column(ds, "location")) if not text.strip()]
    if not bad:
        return None
    return Finding("empty-text", "error", f"{len(bad)} example(s) have an empty or whitespace-only text",
                   len(bad), "remove these rows or fill in their text", bad[:MAX_EXAMPLES])


@register_check("missing-label", "error")
def missing_label(ctx: DoctorContext) -> Finding | None:
    bad = [loc for ds in ctx.splits.values() for lab, loc in zip(column(ds, "label"), column(ds, "location")) if not _labels_of(lab)]
    if not bad:
        return None
    return Finding("missing-label", "error", f"{len(bad)} example(s) have no label", len(bad),
                   "label these rows or remove them", bad[:MAX_EXAMPLES])


@register_check("unknown-label", "error")
def unknown_label(ctx: DoctorContext) -> Finding | None:
    known = set(ctx.labels)
    bad = [f"{loc} (label '{lab}')" for ds in ctx.splits.values()
           for value, loc in zip(column(ds, "label"), column(ds, "location")) for lab in _labels_of(value) if lab not in known]
    if not bad:
        return None
    return Finding("unknown-label", "error",
                   f"{len(bad)} label(s) are not among the known labels {sorted(known)}", len(bad),
                   "correct the label, or add it to data.labels (and give the training data examples of it)",
                   bad[:MAX_EXAMPLES])


@register_check("single-class", "error")
def single_class(ctx: DoctorContext) -> Finding | None:
    train = ctx.splits.get("train")
    if train is None or ctx.multi_label:  # no labelled text (chat or image data), or multi-label
        return None
    seen = {lab for value in column(train, "label") for lab in _labels_of(value)}
    if len(seen) >= 2:
        return None
    return Finding("single-class", "error", f"the training data has {len(seen)} class(es): {sorted(seen)}", 1,
                   "a classifier needs examples of at least two classes")


@register_check("class-too-small-to-split", "error")
def class_too_small(ctx: DoctorContext) -> Finding | None:
    if not ctx.needs_split or "train" not in ctx.splits:
        return None
    rows: dict[str, list[str]] = defaultdict(list)
    for value, loc in zip(column(ctx.splits["train"], "label"), column(ctx.splits["train"], "location")):
        for lab in _labels_of(value):
            rows[lab].append(loc)
    small = {lab: locs for lab, locs in rows.items() if len(locs) < ctx.min_per_class}
    if not small:
        return None
    examples = [f"class '{lab}': {len(locs)} example(s), at {', '.join(locs[:3])}" for lab, locs in small.items()]
    return Finding("class-too-small-to-split", "error",
                   f"{len(small)} class(es) have fewer than {ctx.min_per_class} examples, too few for a "
                   "stratified train/validation/test split", len(small),
                   "add examples of these classes, merge them into a related class, or provide "
                   "data.validation and data.test files", examples[:MAX_EXAMPLES])


@register_check("class-imbalance", "warning")
def class_imbalance(ctx: DoctorContext) -> Finding | None:
    train = ctx.splits.get("train")
    if train is None:
        return None
    counts = Counter(lab for value in column(train, "label") for lab in _labels_of(value))
    if len(counts) < 2:
        return None
    (top, n_top), (low, n_low) = counts.most_common()[0], counts.most_common()[-1]
    if n_top < 10 * n_low:
        return None
    return Finding("class-imbalance", "warning",
                   f"class '{top}' has {n_top} examples, '{low}' only {n_low} ({n_top / n_low:.0f}:1)", 1,
                   "judge by macro-F1 (the default), and consider collecting more minority examples",
                   details={"ratio": round(n_top / n_low, 2), "counts": dict(counts.most_common()),
                            "minority": {lab: n for lab, n in counts.items() if n_top >= 10 * n}})


@register_check("unexpected-columns", "info")
def unexpected_columns(ctx: DoctorContext) -> Finding | None:
    extra = {src: [c for c in cols if c not in ctx.used_columns] for src, cols in ctx.columns.values()}
    extra = {src: cols for src, cols in extra.items() if cols}
    if not extra:
        return None
    return Finding("unexpected-columns", "info",
                   f"{sum(map(len, extra.values()))} column(s) are not used: the model sees only "
                   f"{' and '.join(ctx.used_columns)}", sum(map(len, extra.values())),
                   "nothing to do if they are metadata; if one holds the text or the label, set "
                   "data.text_column / data.label_column", [f"{src}: {cols}" for src, cols in extra.items()],
                   details={"columns": extra})


TEXT_ONLY_CHECKS = ("empty-text", "too-short", "mojibake", "control-characters", "exact-duplicate", "near-duplicate",
                    "leakage", "personal-data")
"""The checks that make sense for unlabelled text (LLM training data); label checks would only misfire."""


def run_checks(ctx: DoctorContext, only: tuple[str, ...] | None = None) -> list[Finding]:
    """Run every registered check (or only the named ones); findings ordered errors first."""
    findings: list[Finding] = []
    for name, (_, check) in CHECKS.items():
        if only is not None and name not in only:
            continue
        result = check(ctx)
        findings += result if isinstance(result, list) else ([result] if result is not None else [])
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


# The checks that live in their own modules register themselves on import (kept last: they import this one).
from tunelab.data import checks_chat, checks_dedup, checks_images, checks_labels, checks_pii, checks_text  # noqa: E402,F401
