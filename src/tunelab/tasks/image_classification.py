"""Image classification on a pre-trained CNN or vision transformer.

Labels, metrics, scores and predictions work exactly as for text (the class inherits them from
TextClassification); what changes is the input pipeline (paths -> pixels, with augmentation in
training and a deterministic resize + centre crop in evaluation), the fine-tuning strategy (linear
probe, full, gradual unfreezing, discriminative learning rates, LoRA for ViT-style models) and the
"before": the majority class and a nearest-centroid classifier on the frozen pre-trained features.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from tunelab.data.doctor import column
from tunelab.data.split import stratify_key
from tunelab.tasks import register_task
from tunelab.tasks.text_classification import EncodedSplit, TextClassification


@register_task("image-classification")
class ImageClassification(TextClassification):
    input_kind = "image"
    checkpoint_everything = True  # small models, and gradual unfreezing changes what trains mid-run

    def __init__(self, labels: list[str], multi_label: bool = False, max_length: int = 0, method: str = "full",
                 image_size: int | None = None, augment: str = "default", seed: int = 42) -> None:
        super().__init__(labels, multi_label=False, max_length=max_length)
        self.method, self.image_size, self.augment, self.seed = method, image_size, augment, seed
        self.processing: Any = None
        self._train_collator: Any = None
        self.extra_baselines: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_spec(cls, spec: Any, labels: list[str]) -> "ImageClassification":
        return cls(labels, method=spec.model.method, image_size=spec.data.image_size, augment=spec.data.augment,
                   seed=spec.training.seed)

    @staticmethod
    def prepare_data(spec: Any, force: bool) -> Any:
        from tunelab.data.image_data import prepare_images

        return prepare_images(spec.data, spec.training.seed, force)

    # -- model ------------------------------------------------------------------------------------
    def load_model(self, base: str) -> torch.nn.Module:
        from tunelab.vision.models import (EFFICIENTNET_ALIASES, build_efficientnet_lite0, build_image_model,
                                           has_trained_batchnorm_stats)
        from tunelab.vision.transforms import ImageProcessing

        id2label = dict(enumerate(self.labels))
        if str(base).lower() in EFFICIENTNET_ALIASES and self.image_size:
            model = build_efficientnet_lite0(len(self.labels), id2label, pretrained=True, image_size=self.image_size)
        else:
            model = build_image_model(base, len(self.labels), id2label)
        size = self.image_size or int(model.config.get("image_size", 224))
        proc = ImageProcessing.for_crop(size)
        proc.mean = tuple(model.config.get("image_mean", proc.mean))
        proc.std = tuple(model.config.get("image_std", proc.std))
        self.processing = proc
        model.config["image_size"] = size
        model.freeze_batchnorm_stats = has_trained_batchnorm_stats(model)  # pre-trained: keep its statistics
        return model

    def apply_method(self, model: torch.nn.Module, spec: Any) -> torch.nn.Module:
        """The spec's strategy: what trains (and, for gradual unfreezing, when)."""
        from tunelab.vision.strategies import apply_strategy

        return apply_strategy(model, self.method)

    def param_groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from tunelab.vision.strategies import param_groups

        return param_groups(model, self.method, lr, weight_decay)

    def on_epoch_start(self, model: torch.nn.Module, epoch: int) -> None:
        from tunelab.vision.strategies import on_epoch_start

        on_epoch_start(model, self.method, epoch)
        if self._train_collator is not None:
            self._train_collator.set_epoch(epoch)

    def peft_task_type(self) -> str | None:
        return None

    # -- data ---------------------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, with_labels: bool = True) -> EncodedSplit:
        features = [{"image": path} for path in column(ds, "image")]
        strata = ["?"] * len(features)
        if with_labels:
            labels = column(ds, "label")
            for f, label in zip(features, labels):
                f["labels"] = self.label2id[label]
            strata = [stratify_key(lab) for lab in labels]
        return EncodedSplit(features, strata, lengths=[1] * len(features))

    def collator(self) -> Any:
        from tunelab.vision.transforms import PixelCollator

        return PixelCollator(self.processing, train=False)

    def train_collator(self) -> Any:
        """Random resized crop, flip (unless `data.augment: no-flip`) and colour jitter; none with `none`."""
        from tunelab.vision.transforms import PixelCollator, TrainAugment

        if self.augment == "none":
            return self.collator()
        # crops keep at least 60% of the image: fine-tuning on a few hundred images, harsher crops (the
        # ImageNet-from-scratch 8%) cut away the object more often than they teach invariance
        augment = TrainAugment(self.processing, seed=self.seed, flip=self.augment != "no-flip", scale=(0.6, 1.0))
        self._train_collator = PixelCollator(self.processing, train=True, augment=augment)
        return self._train_collator

    def truth(self, ds: datasets.Dataset) -> np.ndarray:
        return np.array([self.label2id[lab] for lab in column(ds, "label")])

    # -- baseline: majority class and nearest centroid on frozen pre-trained features --------------
    def baseline(self, folder: str, train: datasets.Dataset, splits: dict[str, datasets.Dataset],
                 template: str = "") -> tuple[str, dict[str, dict[str, Any]]]:
        """Nearest centroid (cosine) on the untuned backbone's features, fitted on the training images;
        the majority class is scored too (kept in `extra_baselines`)."""
        counts = Counter(column(train, "label"))
        top = self.label2id[counts.most_common(1)[0][0]]
        self.extra_baselines = {"majority class of the training data": {
            name: self.metrics(self.truth(ds), np.full(len(ds), top)) for name, ds in splits.items()}}
        base = self.load_model(folder).eval()
        feats = self._features(base, train)
        y = self.truth(train)
        centroids = np.stack([feats[y == k].mean(0) if (y == k).any() else np.zeros(feats.shape[1])
                              for k in range(len(self.labels))])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        scores = {name: self.metrics(self.truth(ds), (self._features(base, ds) @ centroids.T).argmax(-1))
                  for name, ds in splits.items()}
        return "nearest centroid on the frozen pre-trained features (cosine)", scores

    def _features(self, model: torch.nn.Module, ds: datasets.Dataset, batch_size: int = 64) -> np.ndarray:
        collate = self.collator()
        rows = [{"image": p} for p in column(ds, "image")]
        out = []
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                out.append(model.features(collate(rows[i:i + batch_size])["pixel_values"]).float().numpy())
        feats = np.concatenate(out) if out else np.zeros((0, 1))
        return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)

    # -- saving and inference ----------------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """model/: weights (safetensors), tunelab's config and the preprocessing config beside them."""
        from tunelab.vision.models import save_image_model

        save_image_model(model, folder)
        self.processing.save(folder)

    @staticmethod
    def load_saved(model_dir: str | Path) -> tuple[torch.nn.Module, Any]:
        from tunelab.vision.models import load_image_model
        from tunelab.vision.transforms import ImageProcessing

        return load_image_model(model_dir).eval(), ImageProcessing.load(model_dir)

    @classmethod
    def from_saved(cls, model_dir: str | Path, max_length: int = 0) -> tuple["ImageClassification", torch.nn.Module]:
        model, proc = cls.load_saved(model_dir)
        id2label = model.config["id2label"]
        labels = [id2label[i] if i in id2label else id2label[str(i)] for i in range(model.num_labels)]
        task = cls(labels)
        task.processing = proc
        return task, model

    def format_predictions(self, inputs: list[str], logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        rows = super().format_predictions(inputs, logits, top_k)
        for row in rows:
            row["image"] = row.pop("text")
        return rows

    def report_extras(self, model: torch.nn.Module, split: datasets.Dataset, logits: np.ndarray) -> dict[str, Any]:
        """A grid of misclassified test images (true -> predicted), and the other baselines."""
        return {"thumbnails": misclassified_grid(column(split, "image"), self.truth(split), logits.argmax(-1),
                                                 self.labels),
                "extra_baselines": {m: {s: {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                                        for s, r in by_split.items()} for m, by_split in self.extra_baselines.items()}}


def misclassified_grid(paths: list[str], truth: np.ndarray, predicted: np.ndarray, labels: list[str],
                       limit: int = 24) -> str | None:
    """PNG (base64) of up to LIMIT misclassified images, each titled 'true -> predicted'."""
    from PIL import Image

    from tunelab.reports.html import _png, plt

    wrong = [i for i in range(len(paths)) if truth[i] != predicted[i]][:limit]
    if not wrong:
        return None
    cols = min(6, len(wrong))
    rows = (len(wrong) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        with Image.open(paths[i]) as im:
            im.thumbnail((128, 128))
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(f"{labels[truth[i]]} → {labels[predicted[i]]}", fontsize=8, color="#b00")
    return _png(fig)
