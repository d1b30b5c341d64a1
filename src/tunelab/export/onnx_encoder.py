"""ONNX Runtime for text encoders: export once, verify against PyTorch, then serve without the GIL.

Why: on a CPU, ONNX Runtime runs a small BERT-family classifier with less CPU per text than PyTorch eager
(MiniLM-L6 at 64 tokens on 2 AMD EPYC cores: 24 vs 34 ms per text single-threaded at batch 8, 17 vs 38 ms
at batch 1 with two threads; fused kernels, no per-operator Python dispatch), and one ``session.run``
releases the GIL for the whole forward pass, so a busy HTTP event loop and the model threads stop stalling
each other. Single-threaded calls run side by side, which wastes less than one call spread over threads.

An export is used only after it gives the same logits and last hidden states as the PyTorch model
(``np.allclose`` with rtol 1e-3, atol 1e-4) on probe batches of several shapes, with padding, so a model
that does not export faithfully is never served through it: the caller stays on PyTorch and says why.

Libraries: ``torch.onnx.export`` (the dynamo exporter, which uses ``onnxscript``) writes the graph,
``onnx`` checks it, ``onnxruntime`` runs it. Exports are cached under ``<tunelab cache>/onnx/`` keyed by
the sha256 of the weights and the export recipe, written atomically (a killed export leaves nothing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch

logger = logging.getLogger("tunelab.onnx")

INT8_MIN_AGREEMENT = 0.99   # an int8 model must give the float model's label on this share of held-out texts
INT8_MAX_METRIC_DROP = 0.01  # ... and lose at most this much of the run's metric
EXPORT_VERSION = "1"  # bump when the exported graph changes (invalidates cached exports)
RTOL, ATOL = 1e-3, 1e-4


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not reproduce the PyTorch outputs."""


class _EncoderOutputs(torch.nn.Module):
    """(logits, last hidden state): the classifier's scores and what embeddings are pooled from."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.logits, out.hidden_states[-1]


def available() -> str | None:
    """None when ONNX export and ONNX Runtime can be used here, else why not (a missing package)."""
    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            return f"the '{module}' package is not installed (pip install onnxruntime onnx onnxscript)"
    return None


def weights_key(model_dir: Path) -> str:
    """sha256 over the weight files and config of MODEL_DIR plus the export recipe: the cache key."""
    h = hashlib.sha256(f"tunelab-onnx-{EXPORT_VERSION}-torch-{torch.__version__}".encode())
    for path in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("config.json")):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _readable(path: str) -> None:
    """mkstemp makes files private (0600); a model file gets the usual permissions (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def export_encoder(model: torch.nn.Module, dest: Path, max_length: int) -> Path:
    """Write MODEL (a transformers sequence classifier) to DEST as ONNX with dynamic batch and sequence
    axes; outputs ``logits`` and ``hidden``. Atomic: DEST appears complete or not at all."""
    import onnx

    dest.parent.mkdir(parents=True, exist_ok=True)
    length = max(2, min(16, max_length))
    ids = torch.ones((2, length), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=dest.parent)
    os.close(fd)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:  # the exporter's progress chatter and optional-op notes (e.g. torchvision absent)
            lg.setLevel(logging.ERROR)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_EncoderOutputs(model).eval(), (ids, mask), tmp, input_names=["input_ids", "attention_mask"],
                              output_names=["logits", "hidden"], dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        onnx.checker.check_model(tmp)
        _readable(tmp)
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001 - any exporter failure means: serve with PyTorch, say why
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def probe_batches(vocab_size: int, max_length: int, pad_id: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token batches that exercise what serving does: one text, several of different lengths padded on the
    right, and full-length rows."""
    rng = np.random.default_rng(seed)
    low = min(1000, max(1, vocab_size // 4))
    out = []
    for rows, length in ((1, min(7, max_length)), (4, max_length), (3, max(2, max_length // 2))):
        ids = rng.integers(low, vocab_size, size=(rows, length), dtype=np.int64)
        mask = np.ones_like(ids)
        for r in range(1, rows):
            keep = max(1, length - r * max(1, length // (rows + 1)))
            ids[r, keep:], mask[r, keep:] = pad_id, 0
        out.append((ids, mask))
    return out


def pad_batches(rows: list[list[int]], pad_id: int, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask) batches of SIZE token-id rows, padded on the right: ONNX Runtime's inputs."""
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        ids = np.full((len(chunk), max(len(r) for r in chunk)), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for j, r in enumerate(chunk):
            ids[j, :len(r)], mask[j, :len(r)] = r, 1
        out.append((ids, mask))
    return out


@dataclass
class Verification:
    max_logit_diff: float
    max_hidden_diff: float
    batches: int

    def describe(self) -> str:
        return (f"matches PyTorch on {self.batches} probe batches (max |diff| logits {self.max_logit_diff:.1e}, "
                f"hidden states {self.max_hidden_diff:.1e})")


class OnnxEncoder:
    """One ONNX Runtime session. ``run`` is thread-safe and releases the GIL while it computes."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: on a small machine the spinning steals the core
        # that the HTTP event loop needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.threads = path, threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, ids: np.ndarray, mask: np.ndarray, hidden: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = ["logits", "hidden"] if hidden else ["logits"]
        got = self.session.run(outputs, {"input_ids": ids.astype(np.int64, copy=False),
                                         "attention_mask": mask.astype(np.int64, copy=False)})
        return got[0], (got[1] if hidden else None)


def verify(model: torch.nn.Module, encoder: OnnxEncoder, probes: list[tuple[np.ndarray, np.ndarray]]) -> Verification:
    """Compare ENCODER with MODEL on PROBES; raises ExportError naming the worst difference when they disagree."""
    wrapped = _EncoderOutputs(model).eval()
    worst_logit = worst_hidden = 0.0
    for ids, mask in probes:
        with torch.inference_mode():
            ref_logits, ref_hidden = (t.float().numpy() for t in wrapped(torch.from_numpy(ids), torch.from_numpy(mask)))
        logits, hidden = encoder.run(ids, mask, hidden=True)
        keep = mask.astype(bool)  # padded positions' hidden states are never used
        if not np.allclose(logits, ref_logits, rtol=RTOL, atol=ATOL):
            raise ExportError(f"the ONNX model's logits differ from PyTorch's by up to "
                              f"{np.abs(logits - ref_logits).max():.2e} on a {ids.shape[0]}x{ids.shape[1]} batch")
        if not np.allclose(hidden[keep], ref_hidden[keep], rtol=RTOL, atol=ATOL):
            raise ExportError(f"the ONNX model's hidden states differ from PyTorch's by up to "
                              f"{np.abs(hidden[keep] - ref_hidden[keep]).max():.2e} on a {ids.shape[0]}x{ids.shape[1]} batch")
        worst_logit = max(worst_logit, float(np.abs(logits - ref_logits).max()))
        worst_hidden = max(worst_hidden, float(np.abs(hidden[keep] - ref_hidden[keep]).max()))
    return Verification(worst_logit, worst_hidden, len(probes))


def load_verified(model: torch.nn.Module, model_dir: Path, threads: int, max_length: int, pad_id: int,
                  cache: Path | None = None) -> tuple[OnnxEncoder, Verification]:
    """An ONNX Runtime twin of MODEL (loaded from MODEL_DIR), exported on first use and cached, verified
    against MODEL every time it is loaded. Raises ExportError (with the reason) when it cannot be used."""
    why = available()
    if why:
        raise ExportError(why)
    if cache is None:
        from tunelab.catalog import cache_dir

        cache = cache_dir() / "onnx"
    path = cache / f"{weights_key(model_dir)[:32]}.onnx"
    if not path.is_file():
        print(f"exporting {model_dir} to ONNX for ONNX Runtime (once; cached in {cache})", file=sys.stderr, flush=True)
        started = time.perf_counter()
        export_encoder(model, path, max_length)
        logger.info("exported %s to ONNX in %.1f s: %s", model_dir, time.perf_counter() - started, path)
    try:
        encoder = OnnxEncoder(path, threads)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign cache file: export again once
        logger.warning("cached ONNX model %s does not load (%s); exporting again", path, err)
        path.unlink(missing_ok=True)
        export_encoder(model, path, max_length)
        encoder = OnnxEncoder(path, threads)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 30000)
    return encoder, verify(model, encoder, probe_batches(vocab, max_length, pad_id))


# ------------------------------------------------------------------------------------------- int8
@dataclass
class QuantCheck:
    """How an int8 model compares with the float model on the run's own held-out texts."""

    texts: int
    split: str
    agreement: float           # share of texts with the same top label (multi-label: the same label set)
    max_score_diff: float      # largest |score difference| over all texts and labels
    metric: str
    float_metric: float
    int8_metric: float

    def passes(self, min_agreement: float = INT8_MIN_AGREEMENT, max_drop: float = INT8_MAX_METRIC_DROP) -> bool:
        """The bar an int8 model must clear to be served or exported."""
        return self.agreement >= min_agreement and self.int8_metric >= self.float_metric - max_drop

    def describe(self) -> str:
        return (f"int8 on {self.texts} {self.split} texts: same label for {self.agreement:.1%}, scores within "
                f"{self.max_score_diff:.3f}, {self.metric} {self.int8_metric:.4f} vs {self.float_metric:.4f} in float")


def quantize_int8(fp32_path: Path) -> Path:
    """An int8 twin of FP32_PATH (ONNX Runtime dynamic quantization: int8 weights, activations quantized per
    call), made once beside it and written atomically. Why: the MatMuls of a small encoder cost about 30%
    less CPU in int8 on AVX2 (docs/benchmarks.md), at a small, measured cost in agreement (`check_int8`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest = fp32_path.with_suffix(".int8.onnx")
    if dest.is_file():
        return dest
    fd, tmp = tempfile.mkstemp(suffix=".int8.onnx.tmp", dir=fp32_path.parent)
    os.close(fd)
    quiet = logging.getLogger()
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # "consider pre-processing" advice, printed by quantize_dynamic on the root logger
        quantize_dynamic(str(fp32_path), tmp, weight_type=QuantType.QInt8, per_channel=True)
        _readable(tmp)
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001 - any quantizer failure: the caller reports it
        raise ExportError(f"int8 quantization failed: {type(err).__name__}: {err}") from err
    finally:
        quiet.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def check_int8(reference: OnnxEncoder, quantized: OnnxEncoder, batches: list[tuple[np.ndarray, np.ndarray]],
               truth: list[Any], scores_fn: Any, predict_fn: Any, metrics_fn: Any, metric: str, split: str
               ) -> QuantCheck:
    """Score the held-out BATCHES with both encoders (REFERENCE is the verified float export, i.e. PyTorch's
    numbers) and compare labels, scores and the task metric. SCORES_FN maps logits to scores, PREDICT_FN
    logits to predicted label ids, METRICS_FN(truth, predictions) to the task's metrics."""
    ref_logits, q_logits = [], []
    for ids, mask in batches:
        ref_logits.append(reference.run(ids, mask)[0])
        q_logits.append(quantized.run(ids, mask)[0])
    ref, q = np.concatenate(ref_logits), np.concatenate(q_logits)
    ref_pred, q_pred = predict_fn(ref), predict_fn(q)
    same = [a == b if not isinstance(a, (list, np.ndarray)) else list(a) == list(b) for a, b in zip(ref_pred, q_pred)]
    ref_m, q_m = metrics_fn(truth, ref_pred), metrics_fn(truth, q_pred)
    return QuantCheck(texts=len(ref), split=split, agreement=float(np.mean(same)) if same else 0.0,
                      max_score_diff=float(np.abs(scores_fn(ref) - scores_fn(q)).max()) if len(ref) else 0.0,
                      metric=metric, float_metric=float(ref_m[metric]), int8_metric=float(q_m[metric]))
