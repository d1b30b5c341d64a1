"""`tunelab data check`: the doctor that `train` runs, on a spec's data or on data files, before any training.

A spec is checked exactly as `train` checks it: its task's own `prepare_data` reads the data and runs the
doctor (so a chat spec gets the chat checks, an image spec the image checks). Data files take the same
path: they become a spec of the task they hold (inferred from the files, or given with --task), and one,
two or three files are the train, validation and test splits, so leakage across files is checked exactly
as across a spec's splits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data import file_fingerprint
from tunelab.data import report as data_report
from tunelab.data.findings import SPLIT_ORDER, Finding
from tunelab.data.sources import BUNDLED_DATA, DataError, MalformedFile

# what a file's name says about its split: `reviews_dev.csv` is validation, `test.jsonl` is test
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                "validation": "validation", "dev": "validation", "test": "test", "testing": "test"}
_TOKENIZED_INPUTS = ("text", "messages")  # input kinds whose length the base model's tokenizer measures
_CHAT_KEYS = ({"messages"}, {"conversations"}, {"instruction", "output"})  # OpenAI, ShareGPT, Alpaca records


@dataclass
class CheckOptions:
    """How to read data files (a spec carries its own settings; these then must stay unset).

    None means "the task's default"; a setting the task does not have is an error, not ignored."""

    task: str | None = None
    validation: str | None = None
    test: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    image_column: str | None = None
    multi_label: bool = False
    model: str | None = None  # base model whose tokenizer measures lengths (files; a spec names its own)
    max_length: int | None = None


def check(targets: Sequence[str], options: CheckOptions | None = None) -> dict[str, Any]:
    """Check TARGETS (one spec YAML, or data files / bundled set names) and return the data report dict.

    A malformed file becomes a report with every bad line (its `malformed-file` finding), not a crash."""
    options = options or CheckOptions()
    try:
        spec = _spec_of(list(targets), options)
        return check_spec(spec, measure_tokens=_is_spec(targets[0]) or options.model is not None)
    except MalformedFile as err:
        finding = Finding("malformed-file", "error", f"{len(err.problems)} line(s) of {err.path} cannot be read",
                          len(err.problems), err.fix, err.problems[:MalformedFile.LISTED],
                          locations=[p.split(": ", 1)[0] for p in err.problems])
        return data_report.build([finding], {}, [file_fingerprint(str(err.path))])


def check_spec(spec: Any, measure_tokens: bool = True) -> dict[str, Any]:
    """The doctor on SPEC's data, by the task's own `prepare_data`: what `tunelab train` would report
    (nothing is dropped: errors are reported, not forced). MEASURE_TOKENS: load the base model's tokenizer for
    the length checks (skipped, and said so in a note, when it cannot be loaded)."""
    from tunelab.tasks import get_task

    task_cls = get_task(spec.task)
    tokenizer, note = _tokenizer(spec, task_cls) if measure_tokens else (None, None)
    prepared = task_cls.prepare_data(spec, None, False, tokenizer=tokenizer)
    findings = prepared.findings + ([note] if note else [])
    return data_report.build(findings, {k: len(v) for k, v in prepared.splits.items()}, prepared.files)


def _is_spec(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) and Path(target).is_file()


def _spec_of(targets: list[str], options: CheckOptions) -> Any:
    """The spec to check: the YAML itself, or one built from data files and OPTIONS."""
    from tunelab.spec import load_spec, parse_spec, spec_class

    if _is_spec(targets[0]):
        extra = targets[1:] + [v for v in (options.validation, options.test) if v]
        if extra:
            raise DataError(f"{targets[0]} is a spec and names its own data; drop {extra} (or check the files "
                            "without the spec)")
        return load_spec(targets[0])
    splits = assign_splits(targets, options.validation, options.test)
    task = options.task or infer_task(splits["train"], options)
    fields = spec_class(task).model_fields["data"].annotation.model_fields
    settings = {"text_column": options.text_column, "label_column": options.label_column,
                "image_column": options.image_column, "multi_label": options.multi_label or None,
                "max_length": options.max_length}
    foreign = [k for k, v in settings.items() if v is not None and k not in fields]
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise DataError(f"{flags} do(es) not apply to {task} data ({splits['train']}); pass --task if the task "
                        "was inferred wrongly")
    data = {**splits, **{k: v for k, v in settings.items() if v is not None}}
    return parse_spec({"task": task, "data": data, **({"model": {"base": options.model}} if options.model else {})},
                      "data check")


def assign_splits(files: Sequence[str], validation: str | None = None, test: str | None = None) -> dict[str, str]:
    """Which file is which split: --validation/--test first, then what a file's name says (`val.csv`, `test.jsonl`,
    `reviews_dev.csv`), then the order given (train, validation, test). The first file is train unless another
    file is named so. An image folder holding `train/`, `val/`, `test/` sub-folders gives those splits."""
    out = {name: src for name, src in (("validation", validation), ("test", test)) if src}
    free = list(files)
    for src in files:
        split = _split_named(src)
        if split and split not in out:
            out[split] = src
            free.remove(src)
    if "train" not in out and files:
        first = free[0] if free else files[0]
        out = {k: v for k, v in out.items() if v != first}
        out["train"] = first
        free = [f for f in files if f not in out.values()]
    for src in free:
        split = next((s for s in SPLIT_ORDER if s not in out), None)
        if split is None:
            raise DataError(f"{src}: more files than splits; give at most three (train, validation, test)")
        out[split] = src
    if len(out) == 1 and Path(out["train"]).is_dir():
        out = _split_folders(Path(out["train"])) or out
    return {s: out[s] for s in SPLIT_ORDER if s in out}


def _split_named(source: str) -> str | None:
    words = {_SPLIT_WORDS.get(w) for w in re.split(r"[^a-z]+", Path(source).stem.lower())} - {None}
    return words.pop() if len(words) == 1 else None


def _split_folders(root: Path) -> dict[str, str] | None:
    """`root/train`, `root/val`, `root/test` (folders of class folders) as splits; None when root has none."""
    found = {_SPLIT_WORDS[p.name.lower()]: str(p) for p in sorted(root.iterdir())
             if p.is_dir() and p.name.lower() in _SPLIT_WORDS}
    return found if "train" in found else None


def infer_task(source: str, options: CheckOptions) -> str:
    """The task a data file holds, from its kind and its first record's columns; --task overrides."""
    from tunelab.data.conversations import BUNDLED_CHAT_DATA
    from tunelab.data.images import BUNDLED_IMAGE_DATA

    path = Path(source)
    if source in BUNDLED_IMAGE_DATA or path.suffix.lower() == ".npz":
        return "image-classification"
    if source in BUNDLED_CHAT_DATA:
        return "chat"
    if source in BUNDLED_DATA:
        return "text-classification"
    if path.is_dir() and not any(f.is_file() for f in path.rglob("*")):
        raise DataError(f"{path}: the folder holds no files; point at a data file (.csv, .tsv, .jsonl, .json, "
                        ".parquet), a `datasets` save_to_disk folder, or an image folder (<class>/<image> files)")
    if path.is_dir() and not (path / "dataset_info.json").is_file():
        return "image-classification"
    if path.suffix.lower() == ".txt":
        return "completion"
    columns = _first_columns(source)
    if any(keys <= columns for keys in _CHAT_KEYS):
        return "chat"
    if (options.image_column or "image") in columns:
        return "text-image-classification" if (options.text_column or "text") in columns else "image-classification"
    return "text-classification"


def _first_columns(source: str) -> set[str]:
    from tunelab.data.checks.chat import read_records  # reads a .json array too

    if Path(source).suffix.lower() == ".json":
        records = read_records(source)
        return set(records[0][1]) if records and isinstance(records[0][1], dict) else set()
    from tunelab.data.sources import source_columns

    return set(source_columns(source))


def _tokenizer(spec: Any, task_cls: Any) -> tuple[Any, Finding | None]:
    """The tokenizer `train` would measure lengths with (None for image tasks), or None and a note saying why
    the length checks were skipped (the base model cannot be loaded here, e.g. offline)."""
    if task_cls.input_kind not in _TOKENIZED_INPUTS:
        return None, None
    from tunelab import catalog
    from tunelab.tasks import CAUSAL_LM

    try:
        folder = catalog.resolve(spec.model.base)
        if task_cls.family == CAUSAL_LM:
            return task_cls.from_spec(spec).load_tokenizer(folder), None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder), None
    except Exception as err:  # noqa: BLE001 - any failure to load only means lengths are not measured
        reason = " ".join(str(err).split())[:200]
        return None, Finding("token-lengths-not-measured", "info",
                             f"the tokenizer of {spec.model.base} could not be loaded ({type(err).__name__}: "
                             f"{reason}); token-length checks were skipped", 0,
                             "make the base model available (a bundled name or a local folder), or pass --model")
