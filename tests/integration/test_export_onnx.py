"""`tunelab export RUN --onnx`: a standalone ONNX Runtime folder that reproduces the trained classifier."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import tunelab, write_spec  # noqa: E402


@pytest.fixture(scope="module")
def clf_run(tiny_assets: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = write_spec(tmp_path_factory.mktemp("onnx") / "spec.yaml", tiny_assets, training={"epochs": 2})
    done = tunelab("train", str(spec), "--name", "onnx-clf")
    assert done.returncode == 0, done.stderr[-2000:]
    return spec.parent / "runs" / "onnx-clf"


def test_export_folder_reproduces_predict(clf_run: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from tunelab.evaluate.predict import predict_inputs

    out = tmp_path / "onnx"
    done = tunelab("export", str(clf_run), "--onnx", "--quantize", "int8", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "probe batches match PyTorch" in done.stdout and "test texts: max |diff| logits" in done.stdout
    record = json.loads((out / "verification.json").read_text())
    held = record["held_out_check"]
    assert held["passed"] and held["same_label"] == 1.0 and held["texts"] > 0 and held["max_logit_diff"] < 1e-4
    assert held["onnx"] == pytest.approx(held["pytorch"], abs=1e-9)
    assert set(record["labels"]) == {"sports", "tech", "weather"} and record["scores"] == "softmax(logits)"
    q = record["int8_check"]
    assert (out / "model.int8.onnx").is_file() == q["passed"]
    assert (out / "model.onnx").stat().st_mode & 0o044, "model files must be readable by others (not 0600)"
    # standalone use: only onnxruntime and the folder's tokenizer, no tunelab and no PyTorch model
    texts = ["goal match team score coach", "laptop software chip code server", "rain storm sunny"]
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(texts, truncation=True, max_length=record["max_length"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": enc["input_ids"].astype(np.int64),
                                         "attention_mask": enc["attention_mask"].astype(np.int64)})
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    expected = predict_inputs(clf_run, texts)
    for row, ref in zip(scores, expected):
        assert record["labels"][int(row.argmax())] == ref["label"] and float(row.max()) == pytest.approx(ref["score"], abs=1e-5)


def test_an_export_that_differs_is_not_written(clf_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the exporter writes a graph of slightly different weights (as a buggy exporter
    would); the probe check catches it, nothing is left in the output folder."""
    from tunelab.export import onnx_encoder
    from tunelab.export.onnx import ExportMismatch, export_onnx

    real = onnx_encoder.export_encoder

    def buggy(model, dest, max_length):  # noqa: ANN001, ANN202
        other = copy.deepcopy(model)
        other.classifier.weight.data += 0.3
        return real(other, dest, max_length)

    monkeypatch.setattr(onnx_encoder, "export_encoder", buggy)
    out = tmp_path / "onnx"
    with pytest.raises(ExportMismatch, match="logits differ from PyTorch's by up to .*nothing was written"):
        export_onnx(clf_run, out)
    assert not out.exists() and not list(tmp_path.glob(".onnx.tmp-*"))


def test_export_options_are_checked_before_any_work(clf_run: Path) -> None:
    both = tunelab("export", str(clf_run), "--onnx", "--merge")
    assert both.returncode == 2 and "say what to export" in both.stderr
    lone = tunelab("export", str(clf_run), "--quantize", "int8", "--merge")
    assert lone.returncode == 2 and "--quantize goes with --onnx" in lone.stderr
