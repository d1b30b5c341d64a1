"""Score a finished run again: on its held-out splits (rebuilt from the stored spec and seed, so they are
the same examples as in training) or on a new labelled source. Reads only the run directory and the task
that trained it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab import catalog
from tunelab.data import DataError
from tunelab.evaluate.metrics import headline
from tunelab.run import RunDir, RunError
from tunelab.run.files import write_json
from tunelab.tasks import base, get_task
from tunelab.train.loop import predict_logits


def evaluate_run(run: str | Path, data: str | None = None, baseline: bool = True) -> dict[str, Any]:
    """Fine-tuned (and baseline) metrics on the run's validation/test splits, or on DATA.

    Results are written to <run>/evaluations/<name>.json.
    """
    run_dir = RunDir(run)
    spec = run_dir.load_spec()
    task_cls = get_task(spec.task)
    if base.EVALUATE not in task_cls.capabilities:
        raise RunError(f"{run}: a {spec.task} run; its held-out loss and answers are in metrics.json and "
                       "generations.json (tunelab generate RUN answers new prompts)")
    task, model = task_cls.from_saved(run_dir, spec)
    prepared = None
    if data:
        splits, name = {"data": task.read_labelled(data, spec)}, Path(data).stem
    else:
        prepared = _prepare(task_cls, spec)
        if prepared.errors:
            raise DataError("cannot score: the run's data no longer passes its checks:\n"
                            + "\n".join(f.render() for f in prepared.errors))
        splits, name = {k: prepared.splits[k] for k in ("validation", "test")}, "heldout"
    result: dict[str, Any] = {"baseline": {}, "fine_tuned": {}}
    for split, ds in splits.items():
        logits = predict_logits(model, task.encode(ds), task.collator(), spec.training.eval_batch_size, desc=split)
        result["fine_tuned"][split] = headline(task.metrics(task.truth(ds), task.predict_ids(logits)))
    if baseline:
        base_task = task_cls.from_spec(spec, task.labels)
        prepared = prepared or _prepare(task_cls, spec)  # read once: the held-out splits came from it too
        train = prepared.splits["train"]  # the majority class and centroids come from here
        _, scores = base_task.baseline(catalog.resolve(spec.model.base), train, splits, spec)
        result["baseline"] = {k: headline({m: x for m, x in v.items() if m != "predictions"}) for k, v in scores.items()}
    write_json(run_dir.evaluations / f"{name}.json", result)
    return result


def _prepare(task_cls: Any, spec: Any) -> Any:
    """The run's data read, checked and split as in training (same spec, same seed: the same examples)."""
    return task_cls.prepare_data(spec, None, False)
