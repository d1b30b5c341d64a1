"""Classification from a text and an image together (a listing's title and photo, a report and its scan).

Two pre-trained encoders — a text encoder (mean-pooled, e.g. the bundled MiniLM) and an image backbone
(e.g. the bundled EfficientNet-Lite0) — feed a small fusion head (concatenate, LayerNorm, MLP). The
encoders are fine-tuned with the head, or kept frozen (`model.freeze_encoders`). The report answers the
question a team asks first — does the second input help? — by fitting the same kind of classifier on
the frozen text features alone, the image features alone and both, on the same test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab.artifacts import atomic_dir
from tunelab.data.doctor import column
from tunelab.data.split import stratify_key
from tunelab.tasks import register_task
from tunelab.tasks.image_classification import ImageClassification
from tunelab.tasks.text_classification import EncodedSplit

CONFIG = "tunelab_text_image.json"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextImageClassifier(nn.Module):
    """Text encoder + image backbone + fusion head; forward returns loss and logits like any classifier."""

    def __init__(self, text_encoder: nn.Module, image_model: nn.Module, num_labels: int, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.text_encoder, self.image_model = text_encoder, image_model
        text_dim = text_encoder.config.hidden_size
        image_dim = image_model.head.in_features if hasattr(image_model.head, "in_features") else hidden
        self.fusion = nn.Sequential(nn.LayerNorm(text_dim + image_dim), nn.Linear(text_dim + image_dim, hidden),
                                    nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))
        self.config: dict[str, Any] = {"num_labels": num_labels, "hidden": hidden, "dropout": dropout}

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_model.features(pixel_values)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                labels: torch.Tensor | None = None, **_: Any) -> SequenceClassifierOutput:
        both = torch.cat([self.text_features(input_ids, attention_mask), self.image_features(pixel_values)], dim=-1)
        logits = self.fusion(both)
        loss = nn.functional.cross_entropy(logits.float(), labels.long()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class TextImageCollator:
    """Tokenised texts (padded to the batch's longest) and pixels, with labels when present."""

    def __init__(self, tokenizer: Any, pixels: Any, max_length: int) -> None:
        self.tokenizer, self.pixels, self.max_length = tokenizer, pixels, max_length

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.pixels, "set_epoch"):
            self.pixels.set_epoch(epoch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pixels([{k: f[k] for k in ("image", "labels") if k in f} for f in features])
        text = self.tokenizer([f["text"] for f in features], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")
        batch.update(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        return batch


@register_task("text-image-classification")
class TextImageClassification(ImageClassification):
    input_kind = "text+image"

    def __init__(self, labels: list[str], multi_label: bool = False, max_length: int = 128, method: str = "full",
                 image_size: int | None = None, augment: str = "default", seed: int = 42,
                 image_base: str = "efficientnet-lite0", freeze_encoders: bool = False) -> None:
        super().__init__(labels, max_length=max_length, method=method, image_size=image_size, augment=augment, seed=seed)
        self.image_base, self.freeze_encoders = image_base, freeze_encoders

    @classmethod
    def for_spec(cls, spec: Any, labels: list[str]) -> "TextImageClassification":
        return cls(labels, max_length=spec.data.max_length, method=spec.model.method, image_size=spec.data.image_size,
                   augment=spec.data.augment, seed=spec.training.seed, image_base=spec.model.image_base,
                   freeze_encoders=spec.model.freeze_encoders)

    @staticmethod
    def prepare_data(spec: Any, force: bool) -> Any:
        from tunelab.data.image_data import prepare_images

        return prepare_images(spec.data, spec.training.seed, force, with_text=True)

    # -- model ------------------------------------------------------------------------------------
    def load_model(self, base: str) -> nn.Module:
        """BASE is the text encoder; the image backbone comes from model.image_base."""
        from transformers import AutoModel, AutoTokenizer

        from tunelab import catalog

        image_model = super().load_model(catalog.resolve(self.image_base))
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        text_encoder = AutoModel.from_pretrained(base)
        model = TextImageClassifier(text_encoder, image_model, len(self.labels))
        model.config.update(text_base=str(base), image_base=self.image_base, image_size=self.processing.crop,
                            id2label=dict(enumerate(self.labels)))
        return model

    def apply_method(self, model: nn.Module, spec: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(not self.freeze_encoders)
        for p in model.fusion.parameters():
            p.requires_grad_(True)
        return model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Encoders at a tenth of the head's learning rate: the head starts from random, they do not."""
        encoders = [p for m in (model.text_encoder, model.image_model) for p in m.parameters()]
        head = list(model.fusion.parameters())
        split = lambda ps, rate: [{"params": [p for p in ps if p.ndim >= 2], "lr": rate, "weight_decay": weight_decay},
                                  {"params": [p for p in ps if p.ndim < 2], "lr": rate, "weight_decay": 0.0}]
        groups = split(head, lr) + ([] if self.freeze_encoders else split(encoders, lr / 10))
        return [g for g in groups if g["params"]]

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if self._train_collator is not None:
            self._train_collator.set_epoch(epoch)

    # -- data ---------------------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, with_labels: bool = True) -> EncodedSplit:
        features = [{"image": path, "text": text} for path, text in zip(column(ds, "image"), column(ds, "text"))]
        strata = ["?"] * len(features)
        if with_labels:
            labels = column(ds, "label")
            for f, label in zip(features, labels):
                f["labels"] = self.label2id[label]
            strata = [stratify_key(lab) for lab in labels]
        return EncodedSplit(features, strata, lengths=[len(f["text"]) for f in features])

    def collator(self) -> TextImageCollator:
        return TextImageCollator(self.tokenizer, super().collator(), self.max_length)

    def train_collator(self) -> TextImageCollator:
        pixels = super().train_collator()
        self._train_collator = TextImageCollator(self.tokenizer, pixels, self.max_length)
        return self._train_collator

    # -- baseline and the modality comparison -------------------------------------------------------
    def frozen_features(self, model: TextImageClassifier, ds: datasets.Dataset,
                        batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised (text, image) features of the untuned encoders."""
        collate = self.collator()
        rows = self.encode(ds, with_labels=False).features
        text, image = [], []
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                b = collate(rows[i:i + batch_size])
                text.append(model.text_features(b["input_ids"], b["attention_mask"]).float().numpy())
                image.append(model.image_features(b["pixel_values"]).float().numpy())
        norm = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
        return norm(np.concatenate(text)), norm(np.concatenate(image))

    def baseline(self, folder: str, train: datasets.Dataset, splits: dict[str, datasets.Dataset],
                 template: str = "") -> tuple[str, dict[str, dict[str, Any]]]:
        """Nearest centroid on the frozen text+image features; majority class and the frozen-feature
        modality comparison (logistic regression on text only / image only / both) are kept too."""
        from collections import Counter

        from sklearn.linear_model import LogisticRegression

        counts = Counter(column(train, "label"))
        top = self.label2id[counts.most_common(1)[0][0]]
        self.extra_baselines = {"majority class of the training data": {
            name: self.metrics(self.truth(ds), np.full(len(ds), top)) for name, ds in splits.items()}}
        model = self.load_model(folder)
        y = self.truth(train)
        train_t, train_i = self.frozen_features(model, train)
        test_t, test_i = self.frozen_features(model, splits["test"])
        views = {"text only": (train_t, test_t), "image only": (train_i, test_i),
                 "text + image": (np.hstack([train_t, train_i]), np.hstack([test_t, test_i]))}
        truth = self.truth(splits["test"])
        self.modality_table = {}
        for name, (xa, xb) in views.items():
            clf = LogisticRegression(max_iter=2000).fit(xa, y)
            self.modality_table[f"{name} (frozen features, logistic regression)"] = self.metrics(truth, clf.predict(xb))
        both = views["text + image"][0]
        centroids = np.stack([both[y == k].mean(0) if (y == k).any() else np.zeros(both.shape[1])
                              for k in range(len(self.labels))])
        scores = {}
        for name, ds in splits.items():
            t, i = self.frozen_features(model, ds)
            scores[name] = self.metrics(self.truth(ds), (np.hstack([t, i]) @ centroids.T).argmax(-1))
        return "nearest centroid on the frozen text + image features", scores

    def report_extras(self, model: nn.Module, split: datasets.Dataset, logits: np.ndarray) -> dict[str, Any]:
        extras = super().report_extras(model, split, logits)
        table = {k: {m: v for m, v in r.items() if not isinstance(v, (dict, list))}
                 for k, r in getattr(self, "modality_table", {}).items()}
        table["text + image (fine-tuned fusion model)"] = {
            m: v for m, v in self.metrics(self.truth(split), logits.argmax(-1)).items() if not isinstance(v, (dict, list))}
        extras.update(modality_table=table, modality_note="Same test examples in every row. The first three fit a "
                      "logistic regression on the untuned encoders' features; the last is the fine-tuned model.")
        return extras

    # -- saving and inference ----------------------------------------------------------------------
    def save_model(self, model: nn.Module, folder: Path) -> None:
        """model/: text_encoder/ (transformers folder + tokenizer), image_model/ (tunelab image folder),
        fusion.safetensors, the preprocessing config and tunelab_text_image.json."""
        from safetensors.torch import save_file

        from tunelab.vision.models import save_image_model

        with atomic_dir(folder) as tmp:
            model.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "text_encoder")
            save_image_model(model.image_model, tmp / "image_model")
            save_file({k: v.detach().cpu().contiguous() for k, v in model.fusion.state_dict().items()},
                      str(tmp / "fusion.safetensors"))
            self.processing.save(tmp)
            cfg = {**model.config, "id2label": {str(k): v for k, v in model.config["id2label"].items()},
                   "max_length": self.max_length}
            (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
            (tmp / "config.json").write_text(json.dumps({"tunelab_task": "text-image-classification"}) + "\n")

    @classmethod
    def from_saved(cls, model_dir: str | Path, max_length: int = 128) -> tuple["TextImageClassification", nn.Module]:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from tunelab.vision.models import load_image_model
        from tunelab.vision.transforms import ImageProcessing

        folder = Path(model_dir)
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        labels = [cfg["id2label"][str(i)] for i in range(cfg["num_labels"])]
        text_encoder = AutoModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
        model = TextImageClassifier(text_encoder, load_image_model(folder / "image_model"), cfg["num_labels"],
                                    cfg["hidden"], cfg["dropout"])
        model.fusion.load_state_dict(load_file(str(folder / "fusion.safetensors")))
        task = cls(labels, max_length=cfg.get("max_length", max_length))
        task.tokenizer = AutoTokenizer.from_pretrained(folder / "text_encoder")
        task.processing = ImageProcessing.load(folder)
        return task, model.eval()
