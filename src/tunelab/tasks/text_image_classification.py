"""Classification from a text and an image together (a listing's title and photo, a report and its scan).

Two pre-trained encoders — a text encoder (mean-pooled, e.g. the bundled MiniLM) and an image backbone
(e.g. the bundled EfficientNet-Lite0) — feed a small fusion head (concatenate, LayerNorm, MLP;
tunelab.vision.fusion). The encoders are fine-tuned with the head, or kept frozen
(`model.freeze_encoders`). The report answers the question a team asks first — does the second input
help? — by fitting the same kind of classifier on the frozen text features alone, the image features
alone and both, on the same test split.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from tunelab.spec.schema import RunSpec, TaskRules
from tunelab.tasks import base
from tunelab.tasks.base import register_task

if TYPE_CHECKING:
    from tunelab.run import RunDir
from tunelab.tasks.image_classification import IMAGE_LEARNING_RATES, IMAGE_METHODS
from tunelab.tasks.images import (ImageInputs, image_report_extras, majority_scores, nearest_centroids,
                                  read_labelled_images)
from tunelab.tasks.labels import EncodedSplit, LabelOutputs, LabelSpace, classifier_train_loader
from tunelab.tasks.sections import ClassifierEvaluation, ClassifierTraining, TextImageData, TextImageModel

CONFIG = "tunelab_text_image.json"


class TextImageClassificationSpec(RunSpec):
    RULES: ClassVar[TaskRules] = TaskRules(methods=IMAGE_METHODS, batchings=("length-mixed", "random"),
                                           metrics=("macro_f1", "accuracy", "micro_f1"), max_length=256,
                                           learning_rates=IMAGE_LEARNING_RATES, method_models="image")
    FAMILY: ClassVar[str] = base.CLASSIFY

    model: TextImageModel = Field(default_factory=TextImageModel,
                                  description="Text encoder (base), image backbone (image_base) and method.")
    data: TextImageData = Field(..., description="Where the labelled text+image pairs come from and how to read them.")
    training: ClassifierTraining = Field(default_factory=ClassifierTraining, description="Optimisation settings.")
    evaluation: ClassifierEvaluation = Field(default_factory=ClassifierEvaluation, description="How models are scored.")


@register_task("text-image-classification")
class TextImageClassification(LabelOutputs):
    family = base.CLASSIFY
    library = "tunelab"
    pipeline_tag = "image-classification"
    spec_class = TextImageClassificationSpec
    template_values: ClassVar[dict[str, Any]] = {"data": {"train": "pairs.csv"}}
    input_kind = "text+image"
    routes = ("/v1/classify",)
    capabilities = frozenset({base.EVALUATE, base.PREDICT})
    checkpoint_everything = True  # small models; keeps a resumed run exact whatever trains

    def __init__(self, labels: list[str], max_length: int = 128, method: str = "full", image_size: int | None = None,
                 augment: str = "default", seed: int = 42, image_base: str = "efficientnet-lite0",
                 freeze_encoders: bool = False, trust_pickle: bool = False) -> None:
        self.space = LabelSpace(labels)
        self.labels, self.multi_label, self.label2id = self.space.labels, False, self.space.label2id
        self.max_length, self.method = max_length, method
        self.images = ImageInputs(image_size, augment, seed, trust_pickle)
        self.image_base, self.freeze_encoders = image_base, freeze_encoders
        self.tokenizer: Any = None
        self.extra_baselines: dict[str, dict[str, Any]] = {}
        self.modality_table: dict[str, dict[str, Any]] = {}

    @property
    def processing(self) -> Any:
        return self.images.processing

    @classmethod
    def from_spec(cls, spec: Any, labels: list[str] | None = None) -> "TextImageClassification":
        return cls(list(labels or spec.data.labels or []), max_length=spec.data.max_length, method=spec.model.method,
                   image_size=spec.data.image_size, augment=spec.data.augment, seed=spec.training.seed,
                   image_base=spec.model.image_base, freeze_encoders=spec.model.freeze_encoders,
                   trust_pickle=spec.model.trust_pickle)

    @classmethod
    def prepare_data(cls, spec: Any, base: str, force: bool, tokenizer: Any = None) -> Any:
        from tunelab.data.image_data import prepare_images

        return prepare_images(spec.data, spec.training.seed, force, with_text=True)

    # -- model ------------------------------------------------------------------------------------
    def load_model(self, base: str) -> Any:
        """BASE is the text encoder; the image backbone comes from model.image_base."""
        from transformers import AutoModel, AutoTokenizer

        from tunelab import catalog
        from tunelab.run.weights import base_weights
        from tunelab.vision.fusion import TextImageClassifier

        image_model = self.images.build_model(catalog.resolve(self.image_base), self.labels)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        text_encoder = AutoModel.from_pretrained(base, use_safetensors=base_weights(base, self.images.trust_pickle))
        model = TextImageClassifier(text_encoder, image_model, len(self.labels))
        model.config.update(text_base=str(base), image_base=self.image_base, image_size=self.processing.crop,
                            id2label=dict(enumerate(self.labels)))
        return model

    def empty_model(self, base: str, device_type: str) -> Any:
        """The model itself, built for real: tunelab's image models are small (a few million weights), and
        building them on the meta device would need a second code path in tunelab.vision for little gain."""
        return self.load_model(base)

    def apply_method(self, model: Any, spec: Any) -> Any:
        for p in model.parameters():
            p.requires_grad_(not self.freeze_encoders)
        for p in model.fusion.parameters():
            p.requires_grad_(True)
        return model

    def param_groups(self, model: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Encoders at a tenth of the head's learning rate: the head starts from random, they do not."""
        from tunelab.train.optim import split_decay

        encoders = [p for m in (model.text_encoder, model.image_model) for p in m.parameters()]
        groups = split_decay(model, model.fusion.parameters(), lr, weight_decay, "head")
        if not self.freeze_encoders:
            groups += split_decay(model, encoders, lr / 10, weight_decay, "encoders")
        return groups

    def on_epoch_start(self, model: Any, epoch: int, first_batch: int = 0) -> None:
        self.images.set_epoch(epoch, first_batch)  # re-seeds the pixels' augmentation, which the text side does not have

    # -- data ---------------------------------------------------------------------------------
    def encode(self, ds: Any, with_labels: bool = True) -> EncodedSplit:
        from tunelab.data.doctor import column

        features = [{"image": path, "text": text} for path, text in zip(column(ds, "image"), column(ds, "text"))]
        strata = ["?"] * len(features)
        if with_labels:
            labels = column(ds, "label")
            for f, label in zip(features, labels):
                f["labels"] = self.label2id[label]
            strata = self.space.strata(labels)
        return EncodedSplit(features, strata, lengths=[len(f["text"]) for f in features])

    def collator(self) -> Any:
        from tunelab.vision.fusion import TextImageCollator

        return TextImageCollator(self.tokenizer, self.images.collator(), self.max_length)

    def train_loader(self, encoded: EncodedSplit, spec: Any) -> tuple[Any, Any]:
        from tunelab.vision.fusion import TextImageCollator

        collate = TextImageCollator(self.tokenizer, self.images.train_collator(), self.max_length)
        return classifier_train_loader(encoded, collate, spec)

    def truth(self, ds: Any) -> np.ndarray:
        from tunelab.data.doctor import column

        return self.space.truth(column(ds, "label"))

    def format_predictions(self, inputs: list[str], logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        return self.space.format_predictions(inputs, logits, top_k, key="image")

    def read_labelled(self, source: str, spec: Any) -> Any:
        return read_labelled_images(source, spec.data, self.labels, with_text=True)

    # -- baseline and the modality comparison -------------------------------------------------------
    def frozen_features(self, model: Any, ds: Any, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised (text, image) features of the untuned encoders."""
        import torch

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

    def baseline(self, folder: str, train: Any, splits: dict[str, Any], spec: Any) -> tuple[str, dict[str, Any]]:
        """Nearest centroid on the frozen text+image features; majority class and the frozen-feature
        modality comparison (logistic regression on text only / image only / both) are kept too."""
        from sklearn.linear_model import LogisticRegression

        self.extra_baselines = majority_scores(self, train, splits)
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
            scores[name] = self.space.scored(self.truth(ds), (np.hstack([t, i]) @ centroids.T).argmax(-1))
        return "nearest centroid on the frozen text + image features", scores

    def report_extras(self, model: Any, split: Any, logits: np.ndarray) -> dict[str, Any]:
        extras = image_report_extras(self, split, logits, self.extra_baselines)
        table = {k: {m: v for m, v in r.items() if not isinstance(v, (dict, list))}
                 for k, r in self.modality_table.items()}
        table["text + image (fine-tuned fusion model)"] = {
            m: v for m, v in self.metrics(self.truth(split), logits.argmax(-1)).items() if not isinstance(v, (dict, list))}
        extras.update(modality_table=table, modality_note="Same test examples in every row. The first three fit a "
                      "logistic regression on the untuned encoders' features; the last is the fine-tuned model.")
        return extras

    # -- saving and inference ----------------------------------------------------------------------
    def save(self, model: Any, run_dir: RunDir) -> None:
        """model/: text_encoder/ (transformers folder + tokenizer), image_model/ (tunelab image folder),
        fusion.safetensors, the preprocessing config and tunelab_text_image.json."""
        from safetensors.torch import save_file

        from tunelab.run.files import atomic_dir
        from tunelab.vision.models import save_image_model

        with atomic_dir(run_dir.model) as tmp:
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
    def from_saved(cls, run_dir: RunDir, spec: Any) -> tuple["TextImageClassification", Any]:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from tunelab.run.weights import check_safetensors
        from tunelab.vision.fusion import TextImageClassifier
        from tunelab.vision.models import load_image_model
        from tunelab.vision.transforms import ImageProcessing

        folder = run_dir.find_model()
        check_safetensors(folder)  # fusion head, text_encoder/ and image_model/: safetensors only
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        labels = [cfg["id2label"][str(i)] for i in range(cfg["num_labels"])]
        text_encoder = AutoModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
        model = TextImageClassifier(text_encoder, load_image_model(folder / "image_model"), cfg["num_labels"],
                                    cfg["hidden"], cfg["dropout"])
        model.fusion.load_state_dict(load_file(str(folder / "fusion.safetensors")))
        task = cls(labels, max_length=cfg.get("max_length", spec.data.max_length),
                   trust_pickle=spec.model.trust_pickle)  # the bases, for re-scoring the baseline
        task.tokenizer = AutoTokenizer.from_pretrained(folder / "text_encoder")
        task.images.processing = ImageProcessing.load(folder)
        return task, model.eval()
