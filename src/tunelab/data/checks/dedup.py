"""Doctor checks for repeated text: exact and near duplicates within a split, leakage across splits, and
identical texts with different labels.

Why: duplicates overweight some examples; a validation/test text that also sits in train makes scores
look better than the model is; the same text with two labels caps accuracy and often marks a labelling
error. All four checks share one analysis per DoctorContext (normalise, encode, MinHash/LSH over the
distinct texts, see `dedup`), computed once and cached, so the whole set costs one pass over the data.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelab.data import dedup
from tunelab.data.findings import MAX_EXAMPLES, SPLIT_ORDER, DoctorContext, Finding, register_check

PARAMS = dedup.NearDupParams()  # the one near-duplicate threshold: the checks and `tunelab data clean` use it


def _column(ds: datasets.Dataset, name: str) -> pa.Array:
    """One column as Arrow, respecting any select/shuffle indices, without making Python objects."""
    col = ds.with_format("arrow")[name]
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _runs(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group ROWS by KEYS: distinct keys (sorted), first row, second row (-1 if none), count."""
    order = np.argsort(keys, kind="stable")
    k, r = keys[order], rows[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(k)])
    second = np.where(counts > 1, r[np.minimum(starts + 1, max(len(r) - 1, 0))], -1)
    return k[starts], r[starts], second, counts


@dataclass
class _Analysis:
    """Per-row text codes and near-duplicate clusters over all splits, concatenated in SPLIT_ORDER."""

    names: list[str]
    splits: list[datasets.Dataset]
    starts: np.ndarray  # global index of each split's first row, plus the total
    split: np.ndarray  # split index per row
    codes: np.ndarray  # normalised-text code per row (-1: empty after normalisation)
    distinct: pa.Array  # normalised text per code
    cluster: np.ndarray  # near-duplicate cluster per code
    # one entry per distinct (split, code): split, code, first row, second row, rows
    u_split: np.ndarray
    u_code: np.ndarray
    u_first: np.ndarray
    u_second: np.ndarray
    u_count: np.ndarray

    def row(self, index: int) -> dict[str, Any]:
        s = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.splits[s][int(index - self.starts[s])]

    def loc(self, index: int) -> str:
        return str(self.row(index)["location"])

    def locs(self, indices: np.ndarray) -> list[str]:
        """Locations of many global row INDICES, in their order, read one split at a time (not row by row)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty(len(indices), dtype=object)
        owner = np.searchsorted(self.starts, indices, side="right") - 1
        for s in np.unique(owner):
            mask = owner == s
            local = (indices[mask] - self.starts[s]).tolist()
            out[mask] = _column(self.splits[int(s)].select(local), "location").to_pylist()
        return [str(v) for v in out]

    def snippet(self, index: int, width: int = 50) -> str:
        text = " ".join(str(self.row(index)["text"]).split())
        return repr(text if len(text) <= width else text[: width - 1] + "…")

    def similarity(self, a: int, b: int) -> float:
        return dedup.jaccard(self.distinct[int(self.codes[a])].as_py(), self.distinct[int(self.codes[b])].as_py(),
                             PARAMS.ngram)


_CACHE: dict[str, Any] = {}  # one analysis, dropped when its context is garbage-collected
_TOKENS = itertools.count()


def _forget(token: int) -> None:
    if _CACHE.get("token") == token:
        _CACHE.clear()


def analyse(ctx: DoctorContext) -> _Analysis:
    """The shared analysis for CTX, cached while CTX and its splits are unchanged."""
    key = tuple((name, id(ds), getattr(ds, "_fingerprint", None), len(ds)) for name, ds in ctx.splits.items())
    ref = _CACHE.get("ctx")
    if ref is not None and ref() is ctx and _CACHE.get("key") == key:
        return _CACHE["value"]
    names = sorted(ctx.splits, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER), n))
    splits = [ctx.splits[n] for n in names]
    sizes = np.array([len(ds) for ds in splits], dtype=np.int64)
    texts = [_column(ds, "text").cast(pa.large_string()) for ds in splits]
    all_texts = pa.concat_arrays(texts) if texts else pa.array([], pa.large_string())
    codes, distinct = dedup.encode(dedup.normalize_texts(all_texts))
    cluster = dedup.near_duplicates(distinct, PARAMS).cluster
    split = np.repeat(np.arange(len(names)), sizes)
    rows = np.flatnonzero(codes >= 0)
    _, first, second, count = _runs(split[rows] * max(len(distinct), 1) + codes[rows], rows)
    value = _Analysis(names, splits, np.r_[0, np.cumsum(sizes)], split, codes, distinct, cluster,
                      split[first], codes[first], first, second, count)
    token = next(_TOKENS)
    _CACHE.clear()
    _CACHE.update(ctx=weakref.ref(ctx), key=key, value=value, token=token)
    weakref.finalize(ctx, _forget, token)
    return value


def _entry_of_rows(a: _Analysis, rows: np.ndarray) -> np.ndarray:
    """For each row (with a text), its index in the per-(split, code) arrays `a.u_*` (sorted by that key)."""
    width = max(len(a.distinct), 1)
    return np.searchsorted(a.u_split * width + a.u_code, a.split[rows] * width + a.codes[rows])


@register_check("exact-duplicate", "warning")
def exact_duplicate(ctx: DoctorContext) -> Finding | None:
    if not any(len(ds) for ds in ctx.splits.values()):  # chat or image data: no texts to compare
        return None
    a = analyse(ctx)
    dup = np.flatnonzero(a.u_count > 1)
    if not len(dup):
        return None
    extra = int((a.u_count[dup] - 1).sum())
    by_split = {a.names[s]: int((a.u_count[dup][a.u_split[dup] == s] - 1).sum()) for s in np.unique(a.u_split[dup])}
    top = dup[np.lexsort((a.u_first[dup], -a.u_count[dup]))][:MAX_EXAMPLES]
    examples = [f"{a.loc(a.u_first[i])} and {a.loc(a.u_second[i])}"
                + (f" (+{a.u_count[i] - 2} more)" if a.u_count[i] > 2 else "") + f": {a.snippet(a.u_first[i])}"
                for i in top]
    rows = np.flatnonzero(a.codes >= 0)
    copies = rows[~np.isin(rows, a.u_first)]  # every row after the first of its text in its split
    return Finding("exact-duplicate", "warning",
                   f"{extra} extra cop(ies) of {len(dup)} text(s) within a split (equal after normalising case, "
                   f"whitespace and edge punctuation): {by_split}", extra,
                   "drop the extra copies (they overweight those examples, and an automatic split can put "
                   "copies on both sides of it)", examples,
                   {"groups": len(dup), "extra_copies": extra, "by_split": by_split}, locations=a.locs(copies))


@register_check("near-duplicate", "info")
def near_duplicate(ctx: DoctorContext) -> Finding | None:
    if not any(len(ds) for ds in ctx.splits.values()):  # chat or image data: no texts to compare
        return None
    a = analyse(ctx)
    if not len(a.u_code):
        return None
    keys = a.u_split * max(len(a.distinct), 1) + a.cluster[a.u_code]
    _, first, second, count = _runs(keys, np.arange(len(keys)))
    groups = np.flatnonzero(count > 1)
    if not len(groups):
        return None
    extra = int((count[groups] - 1).sum())
    per_split = np.bincount(a.u_split[first[groups]], weights=count[groups] - 1, minlength=len(a.names))
    by_split = {name: int(n) for name, n in zip(a.names, per_split) if n}
    examples = []
    for g in groups[np.argsort(a.u_first[first[groups]], kind="stable")][:MAX_EXAMPLES]:
        r1, r2 = int(a.u_first[first[g]]), int(a.u_first[second[g]])
        more = f", +{count[g] - 2} more" if count[g] > 2 else ""
        examples.append(f"{a.loc(r1)} ~ {a.loc(r2)} (similarity {a.similarity(r1, r2):.2f}{more})")
    # every row whose text nearly repeats the text its group is shown by (exact copies of it are exact-duplicate's)
    in_group = np.isin(keys, keys[first[groups]]) & ~np.isin(np.arange(len(keys)), first[groups])
    rows = np.flatnonzero(a.codes >= 0)
    rows = rows[in_group[_entry_of_rows(a, rows)]]
    return Finding("near-duplicate", "info",
                   f"{extra} text(s) nearly repeat another text of the same split (word-bigram Jaccard >= "
                   f"{PARAMS.threshold}, estimated by MinHash): {by_split}", extra,
                   "review these groups: keep one version of templated or lightly edited texts", examples,
                   {"groups": len(groups), "extra_texts": extra, "by_split": by_split,
                    "threshold": PARAMS.threshold}, locations=a.locs(rows))


@dataclass
class Leak:
    """A row of a later split whose text repeats (exactly, or near-identically) a row of an earlier split."""

    split: str
    location: str
    repeats_split: str
    repeats_location: str
    exact: bool
    similarity: float  # word-bigram Jaccard after normalising (1.0 when exact)

    def describe(self) -> str:
        how = "same text" if self.exact else f"similarity {self.similarity:.2f}"
        return f"{self.split} {self.location} repeats {self.repeats_split} {self.repeats_location} ({how})"


def _first_rows(a: _Analysis, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(splits, distinct keys) array: the first row of each split carrying each key (-1: none)."""
    first = np.full((len(a.names), max(len(a.distinct), 1)), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, (a.split[rows], keys), rows)
    return np.where(first == np.iinfo(np.int64).max, -1, first)


def _leaked(a: _Analysis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of a later split that repeats an earlier split: (rows, the earlier row each repeats, exact?).

    The earlier row is an identical text when there is one, else a near-identical one (same near-duplicate
    cluster, i.e. word-bigram Jaccard >= PARAMS.threshold along a chain of verified pairs)."""
    rows = np.flatnonzero(a.codes >= 0)
    by_code = _first_rows(a, a.codes[rows], rows)
    by_cluster = _first_rows(a, a.cluster[a.codes[rows]], rows)
    later = rows[a.split[rows] > 0]
    other = np.full(len(later), -1, dtype=np.int64)
    exact = np.zeros(len(later), dtype=bool)
    for earlier in range(len(a.names) - 1):  # earliest split first: a train row is named before a validation one
        ok = a.split[later] > earlier
        same = np.where(ok, by_code[earlier, a.codes[later]], -1)
        near = np.where(ok, by_cluster[earlier, a.cluster[a.codes[later]]], -1)
        take_exact = (same >= 0) & ~exact
        other = np.where(take_exact, same, other)
        exact |= take_exact
        other = np.where((other < 0) & (near >= 0), near, other)
    hit = other >= 0
    return later[hit], other[hit], exact[hit]


def leaks(ctx: DoctorContext) -> list[Leak]:
    """Every leaked row of CTX's splits (what the leakage check reports), for `tunelab data clean` to drop."""
    if not any(len(ds) for ds in ctx.splits.values()):
        return []
    a = analyse(ctx)
    if len(a.names) < 2:
        return []
    rows, other, exact = _leaked(a)
    where, there = a.locs(rows), a.locs(other)
    return [Leak(a.names[a.split[r]], loc, a.names[a.split[o]], at, bool(e),
                 1.0 if e else a.similarity(int(r), int(o)))
            for r, o, e, loc, at in zip(rows, other, exact, where, there)]


@register_check("leakage", "error")
def leakage(ctx: DoctorContext) -> Finding | None:
    if not any(len(ds) for ds in ctx.splits.values()):  # chat or image data: no texts to compare
        return None
    a = analyse(ctx)
    if len(a.names) < 2 or not len(a.u_code):
        return None
    rows, other, exact = _leaked(a)
    if not len(rows):
        return None
    by_split = {a.names[s]: int((a.split[rows] == s).sum()) for s in np.unique(a.split[rows])}
    shown = np.r_[np.flatnonzero(exact)[:MAX_EXAMPLES], np.flatnonzero(~exact)[:MAX_EXAMPLES]][:MAX_EXAMPLES]
    examples = [Leak(a.names[a.split[rows[i]]], a.loc(int(rows[i])), a.names[a.split[other[i]]],
                     a.loc(int(other[i])), bool(exact[i]),
                     1.0 if exact[i] else a.similarity(int(rows[i]), int(other[i]))).describe() for i in shown]
    n, n_exact = len(rows), int(exact.sum())
    return Finding("leakage", "error",
                   f"{n} row(s) of {', '.join(by_split)} repeat a text of an earlier split "
                   f"({n_exact} identical after normalisation, {n - n_exact} near-identical): {by_split}", n,
                   "remove these rows from the evaluation split (`tunelab data clean` drops every one of them, "
                   "near-identical ones included); scores on texts the model trained on overstate its quality",
                   examples, {"rows": n, "exact": n_exact, "near": n - n_exact, "by_split": by_split,
                              "threshold": PARAMS.threshold}, locations=a.locs(rows))


def _label_strings(ds: datasets.Dataset) -> pa.Array:
    """Labels as one string per row (multi-label sets joined with '|'); missing labels null."""
    col = _column(ds, "label")
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.large_string())
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.binary_join(col.cast(pa.list_(pa.large_string())), pa.scalar("|", pa.large_string()))
    col = col.cast(pa.large_string())
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.large_string()), col)


@register_check("conflicting-labels", "warning")
def conflicting_labels(ctx: DoctorContext) -> Finding | None:
    if not any(len(ds) for ds in ctx.splits.values()):  # chat or image data: no texts to compare
        return None
    a = analyse(ctx)
    enc = pa.concat_arrays([_label_strings(ds) for ds in a.splits]).dictionary_encode()
    labels = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.flatnonzero((a.codes >= 0) & (labels >= 0))
    _, first, _, _ = _runs(a.codes[rows] * max(len(enc.dictionary), 1) + labels[rows], rows)
    first = np.sort(first)  # first row of each distinct (text, label), in row order
    text_codes = a.codes[first]
    codes, lead, _, n_labels = _runs(text_codes, first)  # lead: first row of each text
    conflicted = codes[n_labels > 1]
    if not len(conflicted):
        return None
    names = enc.dictionary.to_pylist()
    examples = []
    for code in codes[n_labels > 1][np.argsort(lead[n_labels > 1])][:MAX_EXAMPLES]:
        at = first[text_codes == code]
        parts = [f"{a.loc(r)} ('{names[labels[r]]}')" for r in at[:3]]
        examples.append(" vs ".join(parts) + f": {a.snippet(int(at[0]))}")
    involved_rows = rows[np.isin(a.codes[rows], conflicted)]
    involved = len(involved_rows)
    return Finding("conflicting-labels", "warning",
                   f"{len(conflicted)} text(s) occur with different labels ({involved} rows)", len(conflicted),
                   "decide the right label for each text and correct or drop the others; if both labels are "
                   "right, the task may need to be multi-label", examples,
                   {"groups": len(conflicted), "rows": involved}, locations=a.locs(involved_rows))
