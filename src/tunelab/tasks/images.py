"""What the image tasks share, as a helper they compose: the image model, its pixel pipeline, augmentation,
frozen features for the nearest-centroid baseline, and the misclassified-thumbnail grid.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


class ImageInputs:
    """The pixel side of an image task: resize + centre crop (evaluation), crop/flip/jitter (training)."""

    def __init__(self, image_size: int | None = None, augment: str = "default", seed: int = 42,
                 trust_pickle: bool = False) -> None:
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.trust_pickle = trust_pickle  # model.trust_pickle: a transformers base may be read from pickle weights
        self.processing: Any = None
        self._train_collator: Any = None

    def build_model(self, base: str, labels: list[str]) -> Any:
        """The image classifier for BASE with a head for LABELS; sets the processing from its config."""
        from tunelab.vision.models import (EFFICIENTNET_ALIASES, build_efficientnet_lite0, build_image_model,
                                           has_trained_batchnorm_stats)
        from tunelab.vision.transforms import ImageProcessing

        id2label = dict(enumerate(labels))
        if str(base).lower() in EFFICIENTNET_ALIASES and self.image_size:
            model = build_efficientnet_lite0(len(labels), id2label, pretrained=True, image_size=self.image_size)
        else:
            model = build_image_model(base, len(labels), id2label, trust_pickle=self.trust_pickle)
        size = self.image_size or int(model.config.get("image_size", 224))
        proc = ImageProcessing.for_crop(size)
        proc.mean = tuple(model.config.get("image_mean", proc.mean))
        proc.std = tuple(model.config.get("image_std", proc.std))
        self.processing = proc
        model.config["image_size"] = size
        model.freeze_batchnorm_stats = has_trained_batchnorm_stats(model)  # pre-trained: keep its statistics
        return model

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

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Re-seed the training augmentation for EPOCH from batch FIRST_BATCH on (so a resumed run sees the
        same crops)."""
        if self._train_collator is not None:
            self._train_collator.set_epoch(epoch, first_batch)

    def features(self, model: Any, paths: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised features of the (untuned) image model for PATHS."""
        import torch

        collate = self.collator()
        rows = [{"image": p} for p in paths]
        out = []
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                out.append(model.features(collate(rows[i:i + batch_size])["pixel_values"]).float().numpy())
        feats = np.concatenate(out) if out else np.zeros((0, 1))
        return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)


def nearest_centroids(features: np.ndarray, y: np.ndarray, n_labels: int) -> np.ndarray:
    """Unit-length class centroids of FEATURES (a zero row for a class without examples)."""
    centroids = np.stack([features[y == k].mean(0) if (y == k).any() else np.zeros(features.shape[1])
                          for k in range(n_labels)])
    return centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12)


def majority_scores(task: Any, train: Any, splits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The majority class of the training data scored on each split (an extra baseline of the report)."""
    from tunelab.data.doctor import column

    counts = Counter(column(train, "label"))
    top = task.label2id[counts.most_common(1)[0][0]]
    return {"majority class of the training data": {
        name: task.metrics(task.truth(ds), np.full(len(ds), top)) for name, ds in splits.items()}}


def image_report_extras(task: Any, split: Any, logits: np.ndarray, extra_baselines: dict[str, Any]) -> dict[str, Any]:
    """A grid of misclassified test images (true -> predicted), and the further baselines."""
    from tunelab.data.doctor import column

    from tunelab.vision.thumbnails import misclassified_grid

    return {"thumbnails": misclassified_grid(column(split, "image"), task.truth(split), logits.argmax(-1), task.labels),
            "extra_baselines": {m: {s: {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                                    for s, r in by_split.items()} for m, by_split in extra_baselines.items()}}


def read_labelled_images(source: str, data_spec: Any, labels: list[str], with_text: bool) -> Any:
    """A labelled image source to score a run on (`tunelab evaluate RUN --data`): its test split when it has
    one, else all of it; label and image errors stop it, naming the file and the fix."""
    from tunelab.data import DataError
    from tunelab.data.doctor import DoctorContext, run_checks
    from tunelab.data.image_data import IMAGE_CHECKS, _read

    found = _read(source, data_spec, with_text=with_text)
    ds = found.get("test", found["train"])
    images = {"data": list(zip(ds["location"], ds["image"]))}
    view = ds if "text" in ds.column_names else ds.add_column("text", [""] * len(ds))
    errors = [f for f in run_checks(DoctorContext({"data": view}, labels, images=images),
                                    only=("missing-label", "unknown-label") + IMAGE_CHECKS) if f.severity == "error"]
    if errors:
        raise DataError(f"{source}: cannot score:\n" + "\n".join(f.render() for f in errors))
    return ds
