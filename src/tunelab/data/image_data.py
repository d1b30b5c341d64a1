"""Prepare data for the image tasks: read, check (label and image checks), split (stratified).

The counterpart of `tunelab.data.prepare` for examples that are an image (and, for the multimodal task,
a text) with a label. The doctor's image checks decode every file once before any training, so a
truncated JPEG or an HTML page saved as `.png` is reported with its path instead of crashing step 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import datasets

from tunelab.data import Prepared, file_fingerprint, infer_labels
from tunelab.data.doctor import DoctorContext, Finding, column, run_checks
from tunelab.data.split import stratified_sample, stratified_split

if TYPE_CHECKING:  # annotations only: at run time data needs nothing from the spec package
    from tunelab.spec import DataSpec

LABEL_CHECKS = ("missing-label", "unknown-label", "single-class", "class-too-small-to-split", "class-imbalance")
IMAGE_CHECKS = ("image-unreadable", "image-not-an-image", "image-tiny", "image-mixed-modes", "image-split-duplicate",
                "image-split-near-duplicate")
TEXT_CHECKS = ("empty-text", "too-short", "mojibake", "control-characters", "personal-data")


def _read(source: str, spec: DataSpec, with_text: bool) -> dict[str, datasets.Dataset]:
    """Splits from one source: an .npz with MedMNIST-style splits gives several, anything else one."""
    from tunelab.data.images import read_images, read_npz_splits

    if source.lower().endswith(".npz") and not with_text:
        return read_npz_splits(source)
    ds = read_images(source, spec.image_column, spec.label_column)
    if with_text:
        from tunelab.data.sources import read_source

        texts = read_source(source, spec.text_column, spec.label_column)
        ds = ds.add_column("text", column(texts, "text"))
    return {"train": ds}


def prepare_images(spec: DataSpec, seed: int, force: bool = False, with_text: bool = False) -> Prepared:
    """Images (and texts) with labels per split, the doctor's findings, and the data files' fingerprints."""
    given: dict[str, datasets.Dataset] = {}
    for name, src in (("train", spec.train), ("validation", spec.validation), ("test", spec.test)):
        if not src:
            continue
        found = _read(src, spec, with_text)
        if name == "train":
            given.update(found)  # an .npz may bring its own validation/test splits
        else:
            given[name] = found.get(name, found["train"])
    if spec.labels:
        labels = list(spec.labels)
        given = {k: _ids_to_names(v, labels) for k, v in given.items()}
    else:
        labels = infer_labels(given["train"])
    if spec.limit:
        given["train"] = stratified_sample(given["train"], spec.limit, seed)
    needs_split = not ({"validation", "test"} <= set(given))
    checks = LABEL_CHECKS + IMAGE_CHECKS + (TEXT_CHECKS if with_text else ())
    views = given if with_text else {k: v.add_column("text", [""] * len(v)) for k, v in given.items()}
    images = {k: list(zip(column(v, "location"), column(v, "image"))) for k, v in given.items()}
    findings = run_checks(DoctorContext(splits=views, labels=labels, needs_split=needs_split, images=images), only=checks)
    files = [file_fingerprint(src) for src in (spec.train, spec.validation, spec.test)
             if src and not _bundled(src)]
    if any(f.severity == "error" for f in findings):
        if not force:
            return Prepared(splits=given, labels=labels, findings=findings, files=files)
        given, dropped = _drop_bad(given, labels, findings)
        if dropped:
            findings.append(Finding("forced-drop", "warning", f"--force: dropped {len(dropped)} example(s) with an "
                                    "unknown label or an unreadable image", len(dropped), "fix them and rerun",
                                    dropped[:5], locations=dropped))
    splits = dict(given)
    shares = {name: getattr(spec.split, name) for name in ("validation", "test") if name not in given}
    if shares:
        splits.update(stratified_split(given["train"], shares, seed))
    return Prepared(splits=splits, labels=labels, findings=findings, files=files)


def _bundled(source: str) -> bool:
    from tunelab.data.images import BUNDLED_IMAGE_DATA

    return source in BUNDLED_IMAGE_DATA


def _ids_to_names(ds: datasets.Dataset, labels: list[str]) -> datasets.Dataset:
    convert = lambda v: labels[int(v)] if v not in labels and str(v).isdigit() and int(v) < len(labels) else v
    return ds.map(lambda row: {"label": convert(row["label"])}, desc="label ids to names") if len(ds) else ds


def _drop_bad(given: dict[str, datasets.Dataset], labels: list[str],
              findings: list[Finding]) -> tuple[dict[str, datasets.Dataset], list[str]]:
    """--force: keep rows whose label is known and whose image the doctor could decode."""
    bad_files = {loc for f in findings if f.check in ("image-unreadable", "image-not-an-image")
                 for loc in f.locations}
    known = set(labels)
    out, dropped = {}, []
    for name, ds in given.items():
        keep = []
        for i, (lab, loc) in enumerate(zip(column(ds, "label"), column(ds, "location"))):
            if lab in known and loc not in bad_files:
                keep.append(i)
            else:
                dropped.append(loc)
        out[name] = ds.select(keep)
    return out, dropped


def image_pairs(ds: datasets.Dataset) -> list[tuple[str, str]]:
    """(location, path) pairs of a split, for the doctor's image checks."""
    return list(zip(column(ds, "location"), column(ds, "image")))


__all__ = ["prepare_images", "image_pairs", "LABEL_CHECKS", "IMAGE_CHECKS"]
