"""The basic doctor checks: empty texts, missing or unknown labels, too few classes or examples per class,
class imbalance, and columns the model never sees."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tunelab.data.findings import DoctorContext, Finding, column, register_check, sample


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
                   len(bad), "remove these rows or fill in their text", sample(bad), locations=bad)


@register_check("missing-label", "error")
def missing_label(ctx: DoctorContext) -> Finding | None:
    bad = [loc for ds in ctx.splits.values() for lab, loc in zip(column(ds, "label"), column(ds, "location")) if not _labels_of(lab)]
    if not bad:
        return None
    return Finding("missing-label", "error", f"{len(bad)} example(s) have no label", len(bad),
                   "label these rows or remove them", sample(bad), locations=bad)


@register_check("unknown-label", "error")
def unknown_label(ctx: DoctorContext) -> Finding | None:
    known = set(ctx.labels)
    hits = [(loc, lab) for ds in ctx.splits.values()
            for value, loc in zip(column(ds, "label"), column(ds, "location")) for lab in _labels_of(value) if lab not in known]
    bad = [f"{loc} (label '{lab}')" for loc, lab in hits]
    if not bad:
        return None
    return Finding("unknown-label", "error",
                   f"{len(bad)} label(s) are not among the known labels {sorted(known)}", len(bad),
                   "correct the label, or add it to data.labels (and give the training data examples of it)",
                   sample(bad), locations=[loc for loc, _ in hits])


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
                   "data.validation and data.test files", sample(examples),
                   locations=[loc for locs in small.values() for loc in locs])


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
