"""`tunelab export RUN --onnx`: a text classifier as a self-contained ONNX Runtime folder, verified.

Why a separate export when `tunelab serve` already uses ONNX Runtime: teams deploy classifiers into places
that have no tunelab and no PyTorch (a Java or C# service, a browser, an edge box). The folder holds the
graph, the tokenizer and the label names, and ``verification.json`` says how closely it reproduces the
trained model: on probe batches (logits and hidden states) and on the run's own held-out test texts (every
logit within rtol 1e-3 / atol 1e-4, the same labels, the same metric). An export that fails the check is
not left where a deployment would pick it up: one that fails on the probes is not written at all, one that
fails on the held-out texts is moved to ``<out>.mismatch``; either way the command exits 1.
With ``--quantize int8`` the folder also holds ``model.int8.onnx``, kept only when it gives the float
model's label on at least 99% of the test texts and loses at most 0.01 of the run's metric.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.run import RunDir
from tunelab.run.files import atomic_dir, write_json
from tunelab.export.onnx_encoder import ATOL, INT8_MAX_METRIC_DROP, INT8_MIN_AGREEMENT, RTOL
from tunelab.run import RunError, load_run_spec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


class ExportMismatch(RunError):
    """The export does not reproduce the trained model closely enough; it was moved aside."""


def _held_out(spec: Any) -> tuple[str, Any] | tuple[None, str]:
    """(split name, dataset) of the run's test texts (validation when there is no test split), or (None, why)."""
    from tunelab.data import prepare

    try:
        prepared = prepare(spec.data, spec.training.seed)
    except Exception as err:  # noqa: BLE001 - the data moved or changed: the caller reports the check as skipped
        return None, f"the run's data cannot be read here ({type(err).__name__}: {err})"
    for split in ("test", "validation"):
        ds = prepared.splits.get(split)
        if ds is not None and len(ds):
            return split, ds
    return None, "the run has no held-out split"


def export_onnx(run: str | Path, out_dir: str | Path | None = None, quantize: str | None = None,
                threads: int = 1) -> dict[str, Any]:
    """Write RUN's text classifier to OUT_DIR (default RUN/export/onnx) and verify it; returns the
    verification record (also written as verification.json). Raises ExportMismatch when it does not match."""
    from tunelab.evaluate.metrics import headline
    from tunelab.export.onnx_encoder import (ExportError, OnnxEncoder, check_int8, export_encoder, pad_batches,
                                       probe_batches, quantize_int8, verify)
    from tunelab.tasks import base, get_task
    from tunelab.train.loop import predict_logits

    run = Path(run)
    spec = load_run_spec(run)
    task_cls = get_task(spec.task)
    if base.ONNX not in task_cls.capabilities:
        raise RunError(f"{run}: `export --onnx` writes text classifiers ({spec.task} run given); "
                       + ("use `tunelab export RUN --merge` for chat and completion runs" if base.MERGE in
                          task_cls.capabilities else "image models are served with PyTorch (`tunelab serve`)"))
    if quantize not in (None, "int8"):
        raise RunError(f"--quantize {quantize!r}: the only quantization is int8")
    model_dir = RunDir(run).find_model()
    task, model = task_cls.from_saved(RunDir(run), spec)
    model.eval()
    pad_id = task.tokenizer.pad_token_id or 0
    dest = Path(out_dir) if out_dir else RunDir(run).exports / "onnx"
    metric = spec.evaluation.metric if spec.evaluation.metric != "loss" else "accuracy"
    record: dict[str, Any] = {"run": str(run.resolve()), "task": spec.task, "labels": list(task.labels),
                              "multi_label": bool(task.multi_label), "max_length": spec.data.max_length,
                              "inputs": ["input_ids", "attention_mask"], "outputs": ["logits", "hidden"],
                              "scores": "sigmoid(logits)" if task.multi_label else "softmax(logits)"}
    problems: list[str] = []
    with atomic_dir(dest) as tmp:
        try:
            export_encoder(model, tmp / "model.onnx", spec.data.max_length)
            encoder = OnnxEncoder(tmp / "model.onnx", threads)
            record["probe_check"] = vars(verify(model, encoder, probe_batches(
                int(model.config.vocab_size), spec.data.max_length, pad_id)))
        except ExportError as err:  # nothing is kept: atomic_dir removes the half-made folder
            raise ExportMismatch(f"{run}: {err}; nothing was written to {dest}") from err
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        split, ds = _held_out(spec)
        if split is None:
            record["held_out_check"] = {"skipped": ds}
            if quantize:
                raise RunError(f"{run}: --quantize int8 is checked on the run's held-out texts, and {ds}")
        else:
            encoded = task.encode(ds)
            truth = task.truth(ds)
            ref = predict_logits(model, encoded, task.collator(), spec.training.eval_batch_size, desc="pytorch")
            batches = pad_batches([f["input_ids"] for f in encoded.features], pad_id)
            got = np.concatenate([encoder.run(ids, mask)[0] for ids, mask in batches])
            close = bool(np.allclose(got, ref, rtol=RTOL, atol=ATOL))
            same = float(np.mean([np.array_equal(a, b) for a, b in zip(task.predict_ids(ref), task.predict_ids(got))]))
            ref_m, got_m = (headline(task.metrics(truth, task.predict_ids(x))) for x in (ref, got))
            record["held_out_check"] = {"split": split, "texts": len(ds), "max_logit_diff": float(np.abs(got - ref).max()),
                                        "same_label": same, "metric": metric, "pytorch": ref_m[metric],
                                        "onnx": got_m[metric], "passed": close}
            if not close:
                problems.append(f"on {len(ds)} {split} texts the ONNX logits differ from PyTorch's by up to "
                                f"{np.abs(got - ref).max():.2e}")
            if quantize and close:
                q = OnnxEncoder(quantize_int8(tmp / "model.onnx"), threads)
                check = check_int8(encoder, q, batches, truth, task.scores, task.predict_ids, task.metrics, metric, split)
                ok = check.passes()
                record["int8_check"] = {**vars(check), "passed": ok, "bar": f"same label >= {INT8_MIN_AGREEMENT:.0%}, "
                                                                           f"{metric} drop <= {INT8_MAX_METRIC_DROP}"}
                if not ok:
                    (tmp / "model.int8.onnx").unlink()
        record["files"] = sorted(p.name for p in tmp.iterdir()) + ["verification.json"]
        write_json(tmp / "verification.json", record)
    if problems:
        aside = dest.with_name(dest.name + ".mismatch")
        shutil.rmtree(aside, ignore_errors=True)
        dest.rename(aside)
        raise ExportMismatch(f"{run}: the ONNX export does not reproduce the trained model: {'; '.join(problems)}. "
                             f"Moved to {aside} (see its verification.json)")
    record["folder"] = str(dest)
    return record
