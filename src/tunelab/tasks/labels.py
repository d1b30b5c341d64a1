"""What every classifier task shares, as helpers it composes (no task inherits from another).

`LabelSpace`: label names <-> ids, targets, predictions, metrics, loss, scores and the JSON a prediction
is returned as. `EncodedSplit`: a split as model inputs plus what the batch sampler needs. The classifier
training helpers: the length-mixed / random batch loader and the training step that keeps what the
epoch's training metrics need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np


class EncodedSplit:
    """Encoded examples plus what the sampler needs: lengths and label strata (a map-style dataset)."""

    def __init__(self, features: list[dict[str, Any]], strata: list[str], lengths: list[int] | None = None) -> None:
        self.features = features
        self.lengths = lengths if lengths is not None else [len(f["input_ids"]) for f in features]
        self.strata = strata

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


class LabelSpace:
    """The labels of a classifier run and everything computed from them."""

    def __init__(self, labels: list[str], multi_label: bool = False) -> None:
        self.labels = list(labels)
        self.multi_label = multi_label
        self.label2id = {lab: i for i, lab in enumerate(self.labels)}
        self.class_weights: list[float] | None = None  # set by the recipe (tunelab.auto.defaults); None = plain loss

    def target(self, label: Any) -> Any:
        """A label as the model's training target: an id, or a multi-hot row."""
        if self.multi_label:
            vec = [0.0] * len(self.labels)
            for lab in label:
                vec[self.label2id[lab]] = 1.0
            return vec
        return self.label2id[label]

    def truth(self, values: list[Any]) -> np.ndarray:
        return np.array([self.target(v) for v in values]).astype(int)

    def strata(self, values: list[Any]) -> list[str]:
        from tunelab.data.split import stratify_key

        return [stratify_key(v) for v in values]

    def predict_ids(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return (logits > 0).astype(int)
        return logits.argmax(-1)

    def metrics(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
        from tunelab.evaluate.metrics import classification_metrics

        return classification_metrics(y_true, y_pred, self.labels, self.multi_label)

    def loss(self, logits: np.ndarray, truth: np.ndarray) -> float:
        """Mean loss over a whole split, computed from gathered logits (exact under several processes)."""
        import torch

        x = torch.from_numpy(logits).float()
        if self.multi_label:
            return float(torch.nn.functional.binary_cross_entropy_with_logits(x, torch.from_numpy(truth).float()))
        return float(torch.nn.functional.cross_entropy(x, torch.from_numpy(truth).long()))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)

    def format_predictions(self, inputs: list[str], logits: np.ndarray, top_k: int = 3,
                           key: str = "text") -> list[dict[str, Any]]:
        """One JSON-ready row per input: its label(s) and the top-K scores."""
        out = []
        for value, row in zip(inputs, self.scores(logits)):
            ranked = sorted(zip(self.labels, row.tolist()), key=lambda x: -x[1])
            if self.multi_label:
                pred: Any = [lab for lab, s in ranked if s > 0.5]
                out.append({key: value, "labels": pred, "scores": dict(ranked[:top_k])})
            else:
                out.append({key: value, "label": ranked[0][0], "score": ranked[0][1], "scores": dict(ranked[:top_k])})
        return out

    def scored(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
        """Metrics plus the predictions themselves (under "predictions"), which the promotion gate pairs
        with the fine-tuned model's for its bootstrap interval; the recipe takes them out before saving."""
        return {**self.metrics(y_true, y_pred), "predictions": np.asarray(y_pred)}

    def majority(self, train_labels: list[Any]) -> Callable[[int], np.ndarray]:
        """Predictions of the majority class of the training data, for N examples."""
        counts = Counter(lab for value in train_labels for lab in (value if isinstance(value, list) else [value]))
        if self.multi_label:
            row = np.array([int(counts[lab] >= len(train_labels) / 2) for lab in self.labels])
            return lambda n: np.tile(row, (n, 1))
        top = self.label2id[counts.most_common(1)[0][0]]
        return lambda n: np.full(n, top)


def classifier_train_loader(encoded: EncodedSplit, collate: Callable, spec: Any) -> tuple[Any, Any]:
    """(DataLoader, sampler): length-mixed batches (similar lengths, labels mixed) or random ones."""
    from torch.utils.data import DataLoader

    from tunelab.train.sampling import LengthMixedBatchSampler, RandomBatchSampler

    t = spec.training
    sampler_cls = LengthMixedBatchSampler if t.batching == "length-mixed" else RandomBatchSampler
    sampler = sampler_cls(encoded.lengths, encoded.strata, t.batch_size, t.seed)
    return DataLoader(encoded, batch_sampler=sampler, collate_fn=collate), sampler


def classifier_step(model: Any, batch: dict[str, Any], space: LabelSpace) -> tuple[Any, tuple[list, list]]:
    """The model's own loss, plus (true labels, predicted ids) of the batch for the epoch's training metrics."""
    out = model(**batch)
    truth = batch["labels"].long().cpu().numpy().tolist()
    predicted = space.predict_ids(out.logits.detach().float().cpu().numpy()).tolist()
    return (out.loss if space.class_weights is None else weighted_loss(out.logits, batch["labels"], space)), \
        (truth, predicted)


def weighted_loss(logits: Any, targets: Any, space: LabelSpace) -> Any:
    """The training loss with the space's class weights: weighted cross-entropy, or BCE with a positive weight
    per label (multi-label). Only training is weighted: validation loss and metrics stay plain."""
    import torch
    import torch.nn.functional as F

    w = torch.tensor(space.class_weights, device=logits.device, dtype=logits.dtype)
    if space.multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=w)
    return F.cross_entropy(logits, targets.long(), weight=w)


def classifier_train_metrics(seen: list[tuple[list, list]], space: LabelSpace,
                             names: tuple[str, ...] = ("accuracy", "macro_f1", "micro_f1")) -> dict[str, Any]:
    """The task metrics on the training batches as they were seen during the epoch."""
    if not seen:
        return {}
    truth = [t for batch_truth, _ in seen for t in batch_truth]
    predicted = [p for _, batch_pred in seen for p in batch_pred]
    metrics = space.metrics(np.array(truth), np.array(predicted))
    return {f"train_{k}": metrics[k] for k in names}


class LabelOutputs:
    """The classifier protocol's members that only read the label space, as one-line delegations to the
    composed `LabelSpace` (`self.space`). A mixin of delegations, not a task: no task inherits from another."""

    space: LabelSpace
    metric_names = ("accuracy", "macro_f1", "micro_f1")

    def predict_ids(self, logits: np.ndarray) -> np.ndarray:
        return self.space.predict_ids(logits)

    def use_class_weights(self, weights: list[float] | None) -> None:
        self.space.class_weights = weights

    def metrics(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
        return self.space.metrics(y_true, y_pred)

    def loss(self, logits: np.ndarray, truth: np.ndarray) -> float:
        return self.space.loss(logits, truth)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return self.space.scores(logits)

    def training_step(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return classifier_step(model, batch, self.space)

    def train_metrics(self, seen: list[Any]) -> dict[str, Any]:
        return classifier_train_metrics(seen, self.space, self.metric_names)
