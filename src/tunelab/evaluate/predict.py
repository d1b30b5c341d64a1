"""Predict with a finished run: labels and scores for texts, images or text+image pairs.

Reads only the run directory (tunelab.run) and the task that trained it (tunelab.tasks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab import tasks
from tunelab.data import DataError, read_source
from tunelab.run import RunDir, RunError
from tunelab.tasks import base, get_task
from tunelab.train.loop import predict_logits


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """Texts from a .txt file (one per line) or any table format tunelab reads."""
    if path.suffix.lower() == ".txt":
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(read_source(str(path), text_column, None)["text"])


def load_classifier(run: str | Path) -> tuple[Any, Any, Any]:
    """(spec or None, task, model) of a classifier run; a bare model folder (no spec.yaml around it) is read
    by the task that reads plain transformers classifier folders."""
    run_dir = RunDir(run)
    if not run_dir.has_spec():
        task, model = tasks.from_model_dir(run_dir.find_model())
        return None, task, model
    spec = run_dir.load_spec()
    task_cls = get_task(spec.task)
    if base.PREDICT not in task_cls.capabilities:
        raise RunError(f"{run}: a {spec.task} run predicts no labels; `tunelab generate RUN` answers prompts")
    task, model = task_cls.from_saved(run_dir, spec)
    return spec, task, model


def predict_texts(run: str | Path, texts: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Label and scores per text, from the run's saved model."""
    return predict_inputs(run, texts, None, top_k)


def predict_inputs(run: str | Path, texts: list[str] | None = None, images: list[str] | None = None,
                   top_k: int = 3) -> list[dict[str, Any]]:
    """Label and scores per input for any classifier run: texts, images, or text+image pairs."""
    import datasets

    spec, task, model = load_classifier(run)
    kind, name = task.input_kind, spec.task if spec else task.name
    if "image" not in kind:
        if images:
            raise DataError(f"{name} takes texts only; use --text or --file, not --image")
        encoded = task.encode(datasets.Dataset.from_dict({"text": list(texts or [])}), with_labels=False)
        logits = predict_logits(model, encoded, task.collator(), 64, desc="predicting")
        return task.format_predictions(list(texts or []), np.asarray(logits), top_k)
    images = list(images or [])
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    columns: dict[str, list[str]] = {"image": [str(Path(p).resolve()) for p in images]}
    if "text" in kind:
        if not texts or len(texts) != len(images):
            raise DataError(f"{name} needs one --text per --image ({len(texts or [])} texts, {len(images)} images)")
        columns["text"] = texts
    elif texts:
        raise DataError(f"{name} takes images only; drop --text")
    encoded = task.encode(datasets.Dataset.from_dict(columns), with_labels=False)
    logits = predict_logits(model, encoded, task.collator(), 32, desc="predicting")
    return task.format_predictions(images, np.asarray(logits), top_k)
