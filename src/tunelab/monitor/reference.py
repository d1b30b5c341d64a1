"""What logged traffic is compared with: statistics of the run's own data and model, computed once.

The splits are rebuilt from the stored spec and seed (the same examples as in training). Reference numbers:
training-text lengths and vocabulary; the held-out splits' out-of-vocabulary rate; the model's predicted
labels and top scores on validation; the fine-tuned encoder's embeddings of held-out texts. They are cached
in RUN/monitoring/reference/ keyed by the spec, the model weights and the data files, so a cron job does not
re-read and re-score the data every time.

Why held-out texts, not training texts, for the embedding test: the fine-tuned encoder has fitted its
training examples (pulled them towards their class), so training embeddings are not distributed like
embeddings of new texts from the same source, and an MMD test against them flags in-distribution traffic.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.run import RunDir
from tunelab.monitor import drift

CACHE_VERSION = 1
MIN_HELDOUT = 20  # fewer held-out texts than this: the embedding reference falls back to training texts


@dataclass
class Classifier:
    """A run's saved classifier with what monitoring needs: scores and mean-pooled embeddings."""

    task: Any
    model: Any
    max_length: int

    @property
    def tokenizer(self) -> Any:
        return self.task.tokenizer

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def score_and_embed(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Class scores (softmax, or sigmoid for multi-label) and mean-pooled last hidden states, in order."""
        import torch

        if not texts:
            return np.zeros((0, len(self.labels))), np.zeros((0, self.model.config.hidden_size))
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
        logits, pooled = [None] * len(texts), [None] * len(texts)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], truncation=True, max_length=self.max_length,
                                       padding=True, return_tensors="pt")
                out = self.model(**batch, output_hidden_states=True)
                mask = batch["attention_mask"].unsqueeze(-1).float()
                mean = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                for j, i in enumerate(idx):
                    logits[i], pooled[i] = out.logits[j].float().numpy(), mean[j].numpy()
        return self.task.scores(np.stack(logits)), np.stack(pooled)


def load_classifier(run: Path, spec: Any) -> Classifier:
    from tunelab.tasks import get_task

    task, model = get_task(spec.task).from_saved(RunDir(run), spec)
    return Classifier(task, model, spec.data.max_length)


@dataclass
class Reference:
    labels: list[str]
    train_lengths: np.ndarray
    vocab: set[str]
    heldout_oov: float
    heldout_unk: float | None
    val_predicted: list[str]
    val_scores: np.ndarray
    val_true: dict[str, float]
    embeddings: np.ndarray
    embedding_source: str
    sizes: dict[str, int] = field(default_factory=dict)
    cached: bool = False


def _fingerprint(run: Path, spec: Any, seed: int) -> str:
    from tunelab.data import file_fingerprint

    digest = hashlib.sha256()
    digest.update(RunDir(run).file(RunDir.SPEC).read_bytes())
    model_dir = RunDir(run).model
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()) if model_dir.is_dir() else []:
        st = f.stat()
        digest.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for source in (spec.data.train, spec.data.validation, spec.data.test):
        if source:
            digest.update(json.dumps(file_fingerprint(source), sort_keys=True).encode())
    digest.update(f"v{CACHE_VERSION}:seed{seed}".encode())
    return digest.hexdigest()


def _save(folder: Path, key: str, ref: Reference) -> None:
    from tunelab.run.files import write_json

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".embeddings.tmp-{os.getpid()}.npy"
    np.save(tmp, ref.embeddings)
    os.replace(tmp, folder / "embeddings.npy")
    write_json(folder / "reference.json", {
        "key": key, "labels": ref.labels, "train_lengths": ref.train_lengths.tolist(), "vocab": sorted(ref.vocab),
        "heldout_oov": ref.heldout_oov, "heldout_unk": ref.heldout_unk, "val_predicted": ref.val_predicted,
        "val_scores": ref.val_scores.tolist(), "val_true": ref.val_true, "embedding_source": ref.embedding_source,
        "sizes": ref.sizes})


def _load(folder: Path, key: str) -> Reference | None:
    try:
        data = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        embeddings = np.load(folder / "embeddings.npy")
    except (OSError, ValueError):
        return None
    return Reference(labels=data["labels"], train_lengths=np.asarray(data["train_lengths"], float),
                     vocab=set(data["vocab"]), heldout_oov=data["heldout_oov"], heldout_unk=data["heldout_unk"],
                     val_predicted=data["val_predicted"], val_scores=np.asarray(data["val_scores"], float),
                     val_true=data["val_true"], embeddings=embeddings, embedding_source=data["embedding_source"],
                     sizes=data["sizes"], cached=True)


def build_reference(run: Path, spec: Any, classifier: Classifier, seed: int = 0) -> Reference:
    """Rebuild the run's splits and compute every reference statistic (no cache)."""
    from tunelab.data import DataError, prepare

    prepared = prepare(spec.data, spec.training.seed)
    if prepared.errors:
        raise DataError("the run's data no longer passes its checks, so there is nothing to compare with:\n"
                        + "\n".join(f.render() for f in prepared.errors))
    splits = prepared.splits
    train = list(splits["train"]["text"])
    heldout = list(splits["validation"]["text"]) + list(splits["test"]["text"])
    vocab = drift.vocabulary(train)
    oov, _ = drift.oov_rate(heldout, vocab)
    rng = np.random.default_rng(seed)
    if len(heldout) >= MIN_HELDOUT:
        source, pool = "held-out (validation + test)", heldout
    else:
        source, pool = "training", train
    sample = [pool[i] for i in drift.sample_rows(len(pool), drift.MAX_SAMPLE, rng)]
    batch = spec.training.eval_batch_size
    _, embeddings = classifier.score_and_embed(sample, batch)
    val_texts = list(splits["validation"]["text"])
    val_scores, _ = classifier.score_and_embed(val_texts, batch)
    labels = classifier.labels
    top = val_scores.argmax(-1) if len(val_scores) else np.zeros(0, int)
    true = [lab for v in splits["validation"]["label"] for lab in (v if isinstance(v, list) else [v])]
    return Reference(labels=labels, train_lengths=drift.text_lengths(train), vocab=vocab, heldout_oov=oov,
                     heldout_unk=drift.unk_rate(heldout, classifier.tokenizer),
                     val_predicted=[labels[i] for i in top], val_scores=val_scores.max(-1) if len(val_scores) else
                     np.zeros(0), val_true=drift.distribution(true, labels), embeddings=embeddings,
                     embedding_source=source, sizes={k: len(v) for k, v in splits.items()})


def reference_for(run: Path, spec: Any, classifier: Classifier, seed: int = 0, cache: bool = True) -> Reference:
    """The reference statistics, from RUN/monitoring/reference/ when still valid, else computed and cached."""
    folder = RunDir(run).monitoring / "reference"
    key = _fingerprint(run, spec, seed)
    if cache:
        hit = _load(folder, key)
        if hit is not None:
            return hit
    ref = build_reference(run, spec, classifier, seed)
    if cache:
        try:
            _save(folder, key, ref)
        except OSError:
            pass  # deliberate: a read-only run directory only loses the cache; the report goes to --out
    return ref
