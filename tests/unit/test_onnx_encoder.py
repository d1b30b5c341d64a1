"""ONNX Runtime twin of a text classifier: exported once, cached, and used only when it matches PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tunelab.export import onnx_encoder  # noqa: E402
from tunelab.export.onnx_encoder import ExportError, load_verified, probe_batches, verify  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-clf")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    return model, folder


def test_probe_batches_cover_padding_and_lengths() -> None:
    probes = probe_batches(vocab_size=120, max_length=20, pad_id=0)
    shapes = [ids.shape for ids, _ in probes]
    assert (1, 7) in shapes and (4, 20) in shapes and (3, 10) in shapes
    padded = [mask for _, mask in probes if (mask == 0).any()]
    assert padded, "some probe rows must be padded"
    for ids, mask in probes:
        assert (mask[:, 0] == 1).all() and ((ids == 0) == (mask == 0)).all()
        assert ids.max() < 120


def test_export_is_cached_and_matches_pytorch(tiny: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = tiny
    encoder, check = load_verified(model, folder, threads=1, max_length=24, pad_id=0, cache=tmp_path)
    files = list(tmp_path.glob("*.onnx"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    assert check.batches == 3 and check.max_logit_diff < 1e-4 and check.max_hidden_diff < 1e-4
    # padded rows give the same logits as the same text alone (the mask is honoured by the export)
    ids = np.array([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    batched, _ = encoder.run(ids, mask)
    alone, _ = encoder.run(ids[1:, :3], mask[1:, :3])
    assert np.allclose(batched[1], alone[0], atol=1e-5)
    # a second load reuses the file: the exporter is not called again
    mtime = files[0].stat().st_mtime_ns

    def no_export(*a: object, **k: object) -> None:
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(onnx_encoder, "export_encoder", no_export)
    load_verified(model, folder, threads=1, max_length=24, pad_id=0, cache=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime


def test_an_export_that_differs_from_the_model_is_refused(tiny: tuple, tmp_path: Path) -> None:
    model, folder = tiny
    encoder, _ = load_verified(model, folder, threads=1, max_length=16, pad_id=0, cache=tmp_path)
    changed = type(model).from_pretrained(folder).eval()
    with torch.no_grad():
        changed.classifier.weight.add_(0.5)  # the PyTorch model moved on; the exported graph did not
    with pytest.raises(ExportError, match="logits differ from PyTorch's by up to"):
        verify(changed, encoder, probe_batches(120, 16, 0))


def test_a_corrupt_cached_file_is_exported_again(tiny: tuple, tmp_path: Path) -> None:
    model, folder = tiny
    load_verified(model, folder, threads=1, max_length=16, pad_id=0, cache=tmp_path)
    (path,) = tmp_path.glob("*.onnx")
    path.write_bytes(b"not an onnx model")
    encoder, check = load_verified(model, folder, threads=1, max_length=16, pad_id=0, cache=tmp_path)
    assert path.stat().st_size > 1000 and check.max_logit_diff < 1e-4


def test_new_weights_get_a_new_cache_key(tiny: tuple, tmp_path: Path) -> None:
    _, folder = tiny
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert onnx_encoder.weights_key(copy) == onnx_encoder.weights_key(folder)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert onnx_encoder.weights_key(copy) != onnx_encoder.weights_key(folder)
