"""Text classification, single-label and multi-label, on any encoder transformers can load.

The saved model is a plain `AutoModelForSequenceClassification` folder with `id2label`, so
`transformers.pipeline("text-classification", model=...)` loads it without tunelab.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from tunelab.catalog import hub_error, is_sentence_encoder
from tunelab.data.split import stratify_key
from tunelab.evaluation import classification_metrics
from tunelab.tasks import register_task


class EncodedSplit(torch.utils.data.Dataset):
    """Tokenised examples plus what the sampler needs: lengths and label strata."""

    def __init__(self, features: list[dict[str, Any]], strata: list[str], lengths: list[int] | None = None) -> None:
        self.features = features
        self.lengths = lengths if lengths is not None else [len(f["input_ids"]) for f in features]
        self.strata = strata

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


@register_task("text-classification")
class TextClassification:
    metric_names = ("accuracy", "macro_f1", "micro_f1")

    def __init__(self, labels: list[str], multi_label: bool = False, max_length: int = 256) -> None:
        self.labels = labels
        self.multi_label = multi_label
        self.max_length = max_length
        self.label2id = {lab: i for i, lab in enumerate(labels)}
        self.tokenizer: Any = None

    # -- model -------------------------------------------------------------------------------
    def load_model(self, folder: str) -> torch.nn.Module:
        """Base encoder with a fresh classification head sized for our labels."""
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            return AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
                label2id=self.label2id, ignore_mismatched_sizes=True,
                problem_type="multi_label_classification" if self.multi_label else "single_label_classification",
            )
        except OSError as err:
            if Path(folder).is_dir():
                raise
            raise hub_error(folder, err) from None

    def peft_task_type(self) -> str:
        return "SEQ_CLS"

    # -- data ---------------------------------------------------------------------------------
    def target(self, label: Any) -> Any:
        if self.multi_label:
            vec = [0.0] * len(self.labels)
            for lab in label:
                vec[self.label2id[lab]] = 1.0
            return vec
        return self.label2id[label]

    def encode(self, ds: datasets.Dataset, with_labels: bool = True) -> EncodedSplit:
        enc = self.tokenizer(list(ds["text"]), truncation=True, max_length=self.max_length)
        features = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        strata = ["?"] * len(features)
        if with_labels:
            for f, label in zip(features, ds["label"]):
                f["labels"] = self.target(label)
            strata = [stratify_key(lab) for lab in ds["label"]]
        return EncodedSplit(features, strata)

    def collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(self.tokenizer)

    # -- outputs -> predictions -> metrics ------------------------------------------------------
    def predict_ids(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return (logits > 0).astype(int)
        return logits.argmax(-1)

    def truth(self, ds: datasets.Dataset) -> np.ndarray:
        return np.array([self.target(lab) for lab in ds["label"]]).astype(int)

    def metrics(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
        return classification_metrics(y_true, y_pred, self.labels, self.multi_label)

    def loss(self, logits: np.ndarray, truth: np.ndarray) -> float:
        """Mean loss over a whole split, computed from gathered logits (exact under several processes)."""
        x = torch.from_numpy(logits).float()
        if self.multi_label:
            return float(torch.nn.functional.binary_cross_entropy_with_logits(x, torch.from_numpy(truth).float()))
        return float(torch.nn.functional.cross_entropy(x, torch.from_numpy(truth).long()))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)

    # -- baseline -------------------------------------------------------------------------------
    def baseline(self, folder: str, train: datasets.Dataset, splits: dict[str, datasets.Dataset],
                 template: str = "{label}") -> tuple[str, dict[str, dict[str, Any]]]:
        """Score the untuned model: zero-shot by nearest label-name embedding for a sentence encoder,
        otherwise the majority class of the training data. Returns (method description, metrics per split)."""
        if is_sentence_encoder(folder):
            predict, method = self._zero_shot(folder, template, train), f"zero-shot: nearest label embedding ('{template}')"
        else:
            predict, method = self._majority(train), "majority class of the training data"
        return method, {name: self.metrics(self.truth(ds), predict(list(ds["text"]))) for name, ds in splits.items()}

    def _majority(self, train: datasets.Dataset):
        counts = Counter(lab for value in train["label"] for lab in (value if isinstance(value, list) else [value]))
        if self.multi_label:
            row = np.array([int(counts[lab] >= len(train) / 2) for lab in self.labels])
            return lambda texts: np.tile(row, (len(texts), 1))
        top = self.label2id[counts.most_common(1)[0][0]]
        return lambda texts: np.full(len(texts), top)

    def _zero_shot(self, folder: str, template: str, train: datasets.Dataset | None = None):
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(folder, device="cpu")
        encoder.max_seq_length = min(encoder.max_seq_length or self.max_length, self.max_length)  # same input as fine-tuning
        names = [template.format(label=lab.replace("_", " ").replace("-", " ")) for lab in self.labels]
        label_emb = encoder.encode(names, normalize_embeddings=True)
        # multi-label: predict the k nearest labels, k the training data's mean number of labels per example
        k = max(1, round(float(np.mean([len(v) for v in train["label"]])))) if self.multi_label and train else 1

        def predict(texts: list[str]) -> np.ndarray:
            sims = encoder.encode(texts, batch_size=64, normalize_embeddings=True) @ label_emb.T
            if not self.multi_label:
                return sims.argmax(-1)
            top = np.argsort(-sims, axis=-1)[:, :k]
            out = np.zeros_like(sims, dtype=int)
            np.put_along_axis(out, top, 1, axis=-1)
            return out

        return predict

    # -- inference from a saved folder ------------------------------------------------------------
    @staticmethod
    def load_saved(model_dir: str | Path) -> tuple[torch.nn.Module, Any]:
        """A saved run model, loaded with plain transformers from safetensors only."""
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        return model.eval(), AutoTokenizer.from_pretrained(model_dir)

    @classmethod
    def from_saved(cls, model_dir: str | Path, max_length: int = 256) -> tuple["TextClassification", torch.nn.Module]:
        model, tokenizer = cls.load_saved(model_dir)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task = cls(labels, model.config.problem_type == "multi_label_classification", max_length)
        task.tokenizer = tokenizer
        return task, model

    def format_predictions(self, texts: list[str], logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        out = []
        for text, row in zip(texts, self.scores(logits)):
            ranked = sorted(zip(self.labels, row.tolist()), key=lambda x: -x[1])
            if self.multi_label:
                pred: Any = [lab for lab, s in ranked if s > 0.5]
                out.append({"text": text, "labels": pred, "scores": dict(ranked[:top_k])})
            else:
                out.append({"text": text, "label": ranked[0][0], "score": ranked[0][1], "scores": dict(ranked[:top_k])})
        return out
