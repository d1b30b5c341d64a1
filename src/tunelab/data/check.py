"""`tunelab data check`: run every doctor check on a spec's data or on one file, before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data import file_fingerprint, infer_labels, prepare
from tunelab.data import report as data_report
from tunelab.data.doctor import DoctorContext, Finding, run_checks
from tunelab.data.sources import DataError, MalformedFile, read_source


def _tokenizer(base: str) -> Any:
    """The base model's tokenizer, for token-length checks; None when it cannot be loaded offline."""
    from tunelab import catalog

    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(catalog.resolve(base))
    except Exception:  # noqa: BLE001 - token checks are optional; the others still run
        return None


def _malformed_report(target: str, err: MalformedFile) -> dict[str, Any]:
    finding = Finding("malformed-file", "error", f"{len(err.problems)} line(s) of {err.path} cannot be read",
                      len(err.problems), err.fix, err.problems[:MalformedFile.LISTED])
    return data_report.build([finding], {}, [file_fingerprint(target)])


def check_target(target: str, text_column: str = "text", label_column: str = "label",
                 multi_label: bool = False, base: str | None = None, max_length: int = 256) -> dict[str, Any]:
    """Check TARGET (a spec YAML, a data file or a bundled set name) and return the data report dict.

    A malformed file becomes a report with every bad line (its `malformed-file` finding), not a crash."""
    try:
        return _check(target, text_column, label_column, multi_label, base, max_length)
    except MalformedFile as err:
        return _malformed_report(str(err.path), err)


def _check(target: str, text_column: str, label_column: str, multi_label: bool, base: str | None,
           max_length: int) -> dict[str, Any]:
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        from tunelab.spec import load_spec

        spec = load_spec(target)
        prepared = prepare(spec.data, spec.training.seed, tokenizer=_tokenizer(spec.model.base))
        sizes = {k: len(v) for k, v in prepared.splits.items()}
        return data_report.build(prepared.findings, sizes, prepared.files)
    path = Path(target)
    if path.is_dir() and not (path / "dataset_info.json").is_file():
        return _check_image_folder(path)
    from tunelab.data.checks.chat import read_records

    if not path.is_dir() and path.suffix.lower() in (".jsonl", ".json"):
        records = read_records(target)
        if any("messages" in record for _, record in records):
            ctx = DoctorContext(splits={}, labels=[], records={"train": records},
                                tokenizer=_tokenizer(base) if base else None, max_length=max_length)
            return data_report.build(run_checks(ctx), {"train": len(records)}, [file_fingerprint(target)])
    ds = read_source(target, text_column, label_column, multi_label)
    labels = infer_labels(ds)
    ctx = DoctorContext(splits={"train": ds}, labels=labels, multi_label=multi_label,
                        tokenizer=_tokenizer(base) if base else None, max_length=max_length)
    findings: list[Finding] = run_checks(ctx)
    return data_report.build(findings, {"train": len(ds)}, [file_fingerprint(target)])


def _check_image_folder(root: Path) -> dict[str, Any]:
    """A folder of images: `<split>/<class>/<file>` (split folders named train/val/validation/test) or
    `<class>/<file>`. Every file is checked, not only those with image suffixes: a stray non-image is a
    finding, not something to skip."""
    split_names = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
    if not any(f.is_file() for f in root.rglob("*")):
        raise DataError(f"{root}: the folder holds no files; point at a data file (.csv, .tsv, .jsonl, .json, "
                        ".parquet), a `datasets` save_to_disk folder, or an image folder (<class>/<image> files)")
    tops = [p for p in sorted(root.iterdir()) if p.is_dir()]
    by_split = ({split_names[p.name]: p for p in tops if p.name in split_names}
                if any(p.name in split_names for p in tops) else {"train": root})
    images: dict[str, list[tuple[str, str]]] = {}
    for split, folder in by_split.items():
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        images[split] = [(str(f.relative_to(root)), str(f)) for f in files]
    ctx = DoctorContext(splits={}, labels=[], images=images)
    return data_report.build(run_checks(ctx), {k: len(v) for k, v in images.items()},
                             [file_fingerprint(str(root))])
