"""Image classification on a pre-trained CNN or vision transformer.

Labels, metrics, scores and predictions come from the shared classifier helpers (tunelab.tasks.labels);
what is particular to images is the input pipeline (paths -> pixels, with augmentation in training and a
deterministic resize + centre crop in evaluation; tunelab.tasks.images), the fine-tuning strategy (linear
probe, full, gradual unfreezing, discriminative learning rates, LoRA for ViT-style models;
tunelab.vision.strategies) and the "before": the majority class and a nearest-centroid classifier on the
frozen pre-trained features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from tunelab.spec.schema import RunSpec, TaskRules
from tunelab.tasks import base
from tunelab.tasks.base import register_task

if TYPE_CHECKING:
    from tunelab.run import RunDir
from tunelab.tasks.images import (ImageInputs, image_report_extras, majority_scores, nearest_centroids,
                                  read_labelled_images)
from tunelab.tasks.labels import EncodedSplit, LabelOutputs, LabelSpace, classifier_train_loader
from tunelab.tasks.sections import ClassifierEvaluation, ClassifierTraining, ImageData, ImageModel

IMAGE_METHODS = ("full", "linear-probe", "gradual-unfreeze", "discriminative", "lora")
IMAGE_LEARNING_RATES = {"linear-probe": 1e-3, "lora": 1e-3, "*": 3e-4}


class ImageClassificationSpec(RunSpec):
    RULES: ClassVar[TaskRules] = TaskRules(methods=IMAGE_METHODS, batchings=("length-mixed", "random"),
                                           metrics=("macro_f1", "accuracy", "micro_f1"), max_length=256,
                                           learning_rates=IMAGE_LEARNING_RATES, method_models="image")
    FAMILY: ClassVar[str] = base.CLASSIFY

    model: ImageModel = Field(default_factory=ImageModel, description="Base image model and fine-tuning strategy.")
    data: ImageData = Field(..., description="Where the labelled images come from and how to read them.")
    training: ClassifierTraining = Field(default_factory=ClassifierTraining, description="Optimisation settings.")
    evaluation: ClassifierEvaluation = Field(default_factory=ClassifierEvaluation, description="How models are scored.")


@register_task("image-classification")
class ImageClassification(LabelOutputs):
    family = base.CLASSIFY
    library = "tunelab"
    pipeline_tag = "image-classification"
    spec_class = ImageClassificationSpec
    template_values: ClassVar[dict[str, Any]] = {"data": {"train": "mnist-5k"}, "model": {"base": "efficientnet-lite0"}}
    input_kind = "image"
    routes = ("/v1/classify",)
    capabilities = frozenset({base.EVALUATE, base.PREDICT})
    checkpoint_everything = True  # small models, and gradual unfreezing changes what trains mid-run

    def __init__(self, labels: list[str], method: str = "full", image_size: int | None = None,
                 augment: str = "default", seed: int = 42, trust_pickle: bool = False) -> None:
        self.space = LabelSpace(labels)
        self.labels, self.multi_label, self.label2id = self.space.labels, False, self.space.label2id
        self.method = method
        self.tokenizer: Any = None  # images only: no text to tokenize
        self.max_length = 0
        self.images = ImageInputs(image_size, augment, seed, trust_pickle)
        self.extra_baselines: dict[str, dict[str, Any]] = {}

    @property
    def processing(self) -> Any:
        return self.images.processing

    @classmethod
    def from_spec(cls, spec: Any, labels: list[str] | None = None) -> "ImageClassification":
        return cls(list(labels or spec.data.labels or []), method=spec.model.method, image_size=spec.data.image_size,
                   augment=spec.data.augment, seed=spec.training.seed, trust_pickle=spec.model.trust_pickle)

    @classmethod
    def prepare_data(cls, spec: Any, base: str, force: bool, tokenizer: Any = None) -> Any:
        from tunelab.data.image_data import prepare_images

        return prepare_images(spec.data, spec.training.seed, force)

    # -- model ------------------------------------------------------------------------------------
    def load_model(self, base: str) -> Any:
        return self.images.build_model(base, self.labels)

    def empty_model(self, base: str, device_type: str) -> Any:
        """The model itself, built for real: tunelab's image models are small (a few million weights), and
        building them on the meta device would need a second code path in tunelab.vision for little gain."""
        return self.load_model(base)

    def apply_method(self, model: Any, spec: Any) -> Any:
        """The spec's strategy (an image method of tunelab.train.methods): what trains, and when."""
        return self._method().apply(model, spec, "")

    def param_groups(self, model: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return self._method().groups(model, lr, weight_decay)

    def on_epoch_start(self, model: Any, epoch: int, first_batch: int = 0) -> None:
        self._method().epoch_start(model, epoch)
        self.images.set_epoch(epoch, first_batch)

    def _method(self) -> Any:
        from tunelab.train.methods import IMAGE, get_method

        return get_method(self.method, IMAGE)

    # -- data ---------------------------------------------------------------------------------
    def encode(self, ds: Any, with_labels: bool = True) -> EncodedSplit:
        from tunelab.data.doctor import column

        features = [{"image": path} for path in column(ds, "image")]
        strata = ["?"] * len(features)
        if with_labels:
            labels = column(ds, "label")
            for f, label in zip(features, labels):
                f["labels"] = self.label2id[label]
            strata = self.space.strata(labels)
        return EncodedSplit(features, strata, lengths=[1] * len(features))

    def collator(self) -> Any:
        return self.images.collator()

    def train_loader(self, encoded: EncodedSplit, spec: Any) -> tuple[Any, Any]:
        return classifier_train_loader(encoded, self.images.train_collator(), spec)

    def truth(self, ds: Any) -> np.ndarray:
        from tunelab.data.doctor import column

        return self.space.truth(column(ds, "label"))

    def format_predictions(self, inputs: list[str], logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        return self.space.format_predictions(inputs, logits, top_k, key="image")

    def read_labelled(self, source: str, spec: Any) -> Any:
        return read_labelled_images(source, spec.data, self.labels, with_text=False)

    # -- baseline: majority class and nearest centroid on frozen pre-trained features --------------
    def baseline(self, folder: str, train: Any, splits: dict[str, Any], spec: Any) -> tuple[str, dict[str, Any]]:
        """Nearest centroid (cosine) on the untuned backbone's features, fitted on the training images;
        the majority class is scored too (kept in `extra_baselines`)."""
        from tunelab.data.doctor import column

        self.extra_baselines = majority_scores(self, train, splits)
        model = self.load_model(folder).eval()
        centroids = nearest_centroids(self.images.features(model, column(train, "image")), self.truth(train),
                                      len(self.labels))
        scores = {name: self.space.scored(self.truth(ds), (self.images.features(model, column(ds, "image"))
                                                           @ centroids.T).argmax(-1)) for name, ds in splits.items()}
        return "nearest centroid on the frozen pre-trained features (cosine)", scores

    def report_extras(self, model: Any, split: Any, logits: np.ndarray) -> dict[str, Any]:
        """A grid of misclassified test images (true -> predicted), and the other baselines."""
        return image_report_extras(self, split, logits, self.extra_baselines)

    # -- saving and inference ----------------------------------------------------------------------
    def save(self, model: Any, run_dir: RunDir) -> None:
        """model/: weights (safetensors), tunelab's config and the preprocessing config beside them."""
        from tunelab.vision.models import save_image_model

        folder = run_dir.model
        save_image_model(model, folder)
        self.processing.save(folder)

    @classmethod
    def from_saved(cls, run_dir: RunDir, spec: Any) -> tuple["ImageClassification", Any]:
        from tunelab.vision.models import load_image_model
        from tunelab.vision.transforms import ImageProcessing

        model_dir = run_dir.find_model()
        model = load_image_model(model_dir).eval()
        id2label = model.config["id2label"]
        labels = [id2label[i] if i in id2label else id2label[str(i)] for i in range(model.num_labels)]
        task = cls(labels, trust_pickle=spec.model.trust_pickle)  # the base, for re-scoring the baseline
        task.images.processing = ImageProcessing.load(model_dir)
        return task, model
