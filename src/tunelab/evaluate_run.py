"""Use a finished run: score it on held-out or new data, and predict. Reads only the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab import catalog
from tunelab.artifacts import write_json
from tunelab.data import DataError, prepare, read_source
from tunelab.data.doctor import DoctorContext, run_checks
from tunelab.evaluation import headline
from tunelab.recipe import RunError, load_run_spec
from tunelab.tasks import get_task
from tunelab.training import predict_logits


def _model_dir(run: str | Path) -> Path:
    run = Path(run)
    if (run / "model" / "config.json").is_file():
        return run / "model"
    if (run / "config.json").is_file():
        return run
    raise RunError(f"{run}: no model found (expected {run}/model/config.json); has the run finished?")


def evaluate_run(run: str | Path, data: str | None = None, baseline: bool = True) -> dict[str, Any]:
    """Fine-tuned (and baseline) metrics on the run's validation/test splits, or on DATA.

    The splits are rebuilt from the stored spec and seed, so they are the same examples as in training.
    Results are written to <run>/evaluations/<name>.json.
    """
    spec = load_run_spec(run)
    task_cls = get_task(spec.task)
    if spec.generative:
        raise RunError(f"{run}: a {spec.task} run; its held-out loss and answers are in metrics.json and "
                       "generations.json (tunelab generate RUN answers new prompts)")
    task, model = task_cls.from_saved(_model_dir(run), spec.data.max_length)
    if hasattr(task_cls, "prepare_data"):  # image and text+image runs read their data their own way
        return _evaluate_images(run, spec, task_cls, task, model, data, baseline)
    if data:
        ds = read_source(data, spec.data.text_column, spec.data.label_column, spec.data.multi_label,
                         spec.data.label_separator)
        errors = [f for f in run_checks(DoctorContext({"data": ds}, task.labels, spec.data.multi_label))
                  if f.severity == "error" and f.check != "single-class"]
        if errors:
            raise DataError(f"{data}: cannot score:\n" + "\n".join(f.render() for f in errors))
        splits, name = {"data": ds}, Path(data).stem
    else:
        prepared = prepare(spec.data, spec.training.seed)
        if prepared.errors:
            raise DataError("the run's data no longer passes its checks:\n" + "\n".join(f.render() for f in prepared.errors))
        splits, name = {k: prepared.splits[k] for k in ("validation", "test")}, "heldout"
    result: dict[str, Any] = {"baseline": {}, "fine_tuned": {}}
    for split, ds in splits.items():
        logits = predict_logits(model, task.encode(ds), task.collator(), spec.training.eval_batch_size, desc=split)
        result["fine_tuned"][split] = headline(task.metrics(task.truth(ds), task.predict_ids(logits)))
    if baseline:
        base_task = task_cls(task.labels, task.multi_label, task.max_length)
        train = prepare(spec.data, spec.training.seed).splits["train"]  # the majority class comes from here
        _, scores = base_task.baseline(catalog.resolve(spec.model.base), train, splits, spec.evaluation.zero_shot_template)
        result["baseline"] = {k: headline(v) for k, v in scores.items()}
    write_json(Path(run) / "evaluations" / f"{name}.json", result)
    return result


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """Texts from a .txt file (one per line) or any table format tunelab reads."""
    if path.suffix.lower() == ".txt":
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(read_source(str(path), text_column, None)["text"])


def predict_texts(run: str | Path, texts: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Label and scores per text, from the run's saved model (plain transformers folder)."""
    model_dir = _model_dir(run)
    spec_path = Path(run) / "spec.yaml"
    task_name = load_run_spec(run).task if spec_path.is_file() else "text-classification"
    max_length = load_run_spec(run).data.max_length if spec_path.is_file() else 512
    task, model = get_task(task_name).from_saved(model_dir, max_length)
    import datasets

    encoded = task.encode(datasets.Dataset.from_dict({"text": texts}), with_labels=False)
    logits = predict_logits(model, encoded, task.collator(), 64, desc="predicting")
    return task.format_predictions(texts, np.asarray(logits), top_k)


def predict_inputs(run: str | Path, texts: list[str] | None = None, images: list[str] | None = None,
                   top_k: int = 3) -> list[dict[str, Any]]:
    """Label and scores per input for any classifier run: texts, images, or text+image pairs."""
    if not images:
        return predict_texts(run, texts or [], top_k)
    import datasets

    spec = load_run_spec(run)
    task, model = get_task(spec.task).from_saved(_model_dir(run), spec.data.max_length)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    columns: dict[str, list[str]] = {"image": [str(Path(p).resolve()) for p in images]}
    if getattr(task, "input_kind", "") == "text+image":
        if not texts or len(texts) != len(images):
            raise DataError(f"{spec.task} needs one --text per --image ({len(texts or [])} texts, {len(images)} images)")
        columns["text"] = texts
    elif texts:
        raise DataError(f"{spec.task} takes images only; drop --text")
    encoded = task.encode(datasets.Dataset.from_dict(columns), with_labels=False)
    logits = predict_logits(model, encoded, task.collator(), 32, desc="predicting")
    return task.format_predictions(images, np.asarray(logits), top_k)


def _evaluate_images(run: str | Path, spec: Any, task_cls: Any, task: Any, model: Any, data: str | None,
                     baseline: bool) -> dict[str, Any]:
    """evaluate_run for image and text+image runs: the run's held-out splits, or a labelled source."""
    if data:
        from tunelab.data.image_data import IMAGE_CHECKS, _read

        found = _read(data, spec.data, with_text=getattr(task, "input_kind", "") == "text+image")
        ds = found.get("test", found["train"])
        images = {"data": list(zip(ds["location"], ds["image"]))}
        view = ds if "text" in ds.column_names else ds.add_column("text", [""] * len(ds))
        errors = [f for f in run_checks(DoctorContext({"data": view}, task.labels, images=images),
                                        only=("missing-label", "unknown-label") + IMAGE_CHECKS) if f.severity == "error"]
        if errors:
            raise DataError(f"{data}: cannot score:\n" + "\n".join(f.render() for f in errors))
        splits = {"data": ds}
    else:
        prepared = task_cls.prepare_data(spec, False)
        if prepared.errors:
            raise DataError("cannot score:\n" + "\n".join(f.render() for f in prepared.errors))
        splits = {k: prepared.splits[k] for k in ("validation", "test")}
    name = Path(data).stem if data else "heldout"
    result: dict[str, Any] = {"baseline": {}, "fine_tuned": {}}
    for split, ds in splits.items():
        logits = predict_logits(model, task.encode(ds), task.collator(), spec.training.eval_batch_size, desc=split)
        result["fine_tuned"][split] = headline(task.metrics(task.truth(ds), task.predict_ids(logits)))
    if baseline:
        base_task = task_cls.for_spec(spec, task.labels)
        train = task_cls.prepare_data(load_run_spec(run), False).splits["train"]
        _, scores = base_task.baseline(catalog.resolve(spec.model.base), train, splits)
        result["baseline"] = {k: headline(v) for k, v in scores.items()}
    write_json(Path(run) / "evaluations" / f"{name}.json", result)
    return result
