"""Prepare: read sources, normalise labels, check, split. The recipe's second step."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from tunelab.data.doctor import DoctorContext, Finding, run_checks
from tunelab.data.sources import BUNDLED_DATA, DataError, read_source, source_columns
from tunelab.data.split import stratified_sample, stratified_split

if TYPE_CHECKING:  # annotations only: at run time data needs nothing from the spec package
    from tunelab.spec import DataSpec

__all__ = ["DataError", "Prepared", "prepare", "read_source", "file_fingerprint"]


@dataclass
class Prepared:
    splits: dict[str, datasets.Dataset]
    labels: list[str]
    findings: list[Finding]
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def file_fingerprint(source: str) -> dict[str, Any]:
    """Name and sha256 of a data source, for the model card and lineage."""
    path = Path(source)
    if source in BUNDLED_DATA:
        return {"source": source, "kind": "bundled", "sha256": None}
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return {"source": str(path), "kind": "folder" if path.is_dir() else path.suffix.lstrip("."),
            "sha256": digest.hexdigest()}


def _ids_to_names(ds: datasets.Dataset, labels: list[str]) -> datasets.Dataset:
    """Labels given as integer ids become names when the spec lists the names."""

    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [convert(v) for v in value]
        if value is not None and value not in labels and value.lstrip("-").isdigit() and 0 <= int(value) < len(labels):
            return labels[int(value)]
        return value

    return ds.map(lambda row: {"label": convert(row["label"])}, desc="label ids to names") if len(ds) else ds


def infer_labels(ds: datasets.Dataset) -> list[str]:
    """Sorted distinct labels; numerically when every label is an integer id."""
    seen = {lab for value in ds["label"] for lab in (value if isinstance(value, list) else [value]) if lab is not None}
    if seen and all(s.lstrip("-").isdigit() for s in seen):
        return sorted(seen, key=int)
    return sorted(seen)


def _drop_unusable(ds: datasets.Dataset, labels: list[str], name: str) -> tuple[datasets.Dataset, list[str]]:
    known = set(labels)
    ok = lambda v: bool(v) and all(lab in known for lab in (v if isinstance(v, list) else [v]))
    keep = [i for i, v in enumerate(ds["label"]) if ok(v)]
    dropped = [loc for i, loc in enumerate(ds["location"]) if i not in set(keep)]
    return ds.select(keep), dropped


def _keep_duplicates_in_train(splits: dict[str, datasets.Dataset], carved: list[str]) -> list[str]:
    """Move rows of the carved-out splits whose normalised text is also in train back into train.

    A random split of a file with duplicates puts copies on both sides, and the test score then
    measures memory; keeping every copy on the training side avoids that without dropping anything.
    """
    from tunelab.data.dedup import normalize_texts
    from tunelab.data.doctor import column

    in_train = set(normalize_texts(column(splits["train"], "text")).to_pylist())
    moved: list[str] = []
    for name in carved:
        ds = splits[name]
        norm = normalize_texts(column(ds, "text")).to_pylist()
        leak = [i for i, t in enumerate(norm) if t in in_train]
        if leak:
            moved += column(ds.select(leak), "location")
            splits["train"] = datasets.concatenate_datasets([splits["train"], ds.select(leak)])
            splits[name] = ds.select([i for i in range(len(ds)) if i not in set(leak)])
    return moved


def prepare(spec: DataSpec, seed: int, force: bool = False, tokenizer: Any = None) -> Prepared:
    """Read every source, run the doctor's checks, and split when only a training source is given.

    Checks run before splitting so their row numbers point into the user's files. The caller decides
    what errors mean (stop, or continue with --force).
    """
    read = lambda src: read_source(src, spec.text_column, spec.label_column, spec.multi_label, spec.label_separator)
    given = {name: read(src) for name, src in
             (("train", spec.train), ("validation", spec.validation), ("test", spec.test)) if src}
    labels = list(spec.labels) if spec.labels else infer_labels(given["train"])
    if spec.labels:
        given = {name: _ids_to_names(ds, labels) for name, ds in given.items()}
    if spec.limit:
        given["train"] = stratified_sample(given["train"], spec.limit, seed)
    needs_split = not (spec.validation and spec.test)
    sources = {"train": spec.train, "validation": spec.validation, "test": spec.test}
    columns = {name: (src, source_columns(src)) for name, src in sources.items() if src}
    findings = run_checks(DoctorContext(splits=given, labels=labels, multi_label=spec.multi_label,
                                        needs_split=needs_split, tokenizer=tokenizer, max_length=spec.max_length,
                                        columns=columns, used_columns=(spec.text_column, spec.label_column)))
    files = [file_fingerprint(src) for src in (spec.train, spec.validation, spec.test) if src]
    if any(f.severity == "error" for f in findings):
        if not force:
            return Prepared(splits=given, labels=labels, findings=findings, files=files)
        dropped: list[str] = []
        for name in list(given):
            given[name], lost = _drop_unusable(given[name], labels, name)
            dropped += lost
        if dropped:
            findings.append(Finding("forced-drop", "warning", f"--force: dropped {len(dropped)} row(s) whose "
                                    "label is missing or unknown", len(dropped), "fix the labels and rerun",
                                    dropped[:5], locations=dropped))
    shares = {name: getattr(spec.split, name) for name in ("validation", "test") if name not in given}
    splits = dict(given)
    if shares:
        splits.update(stratified_split(given["train"], shares, seed))
        moved = _keep_duplicates_in_train(splits, list(shares))
        if moved:
            findings.append(Finding("split-duplicates-kept-in-train", "info",
                                    f"{len(moved)} row(s) repeat a training text; they were kept in train rather "
                                    "than split into validation/test, so the split itself creates no leakage",
                                    len(moved), "nothing to do; `tunelab data clean` drops the copies", moved[:5],
                                    locations=moved))
    return Prepared(splits=splits, labels=labels, findings=findings, files=files)
