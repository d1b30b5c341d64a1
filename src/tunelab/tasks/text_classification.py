"""Text classification, single-label and multi-label, on any encoder transformers can load.

The saved model is a plain `AutoModelForSequenceClassification` folder with `id2label`, so
`transformers.pipeline("text-classification", model=...)` loads it without tunelab.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from tunelab.spec.schema import ModelSpec, RunSpec, Section, TaskRules
from tunelab.tasks import base
from tunelab.tasks.base import register_task

if TYPE_CHECKING:
    from tunelab.run import RunDir
from tunelab.tasks.labels import EncodedSplit, LabelOutputs, LabelSpace, classifier_train_loader
from tunelab.tasks.sections import ClassifierTraining, LabelledTextData, TextClassifierEvaluation


# learning rate by method and encoder width (hidden size), narrowest first; evidence in docs/defaults.md:
# BERT-base grids 2e-5..5e-5 and RoBERTa-large 1e-5..2e-5 (full), LoRA paper Table 9 (RoBERTa-base 4e-4..5e-4,
# -large 3e-4..4e-4), and benchmarks/defaults.py on MiniLM (384 wide) for the narrow row
ENCODER_LEARNING_RATES = {"full": ((512, 1e-4), (800, 3e-5), (float("inf"), 1.5e-5)),
                          "lora": ((512, 1e-3), (800, 5e-4), (float("inf"), 3e-4))}


class SetFitSpec(Section):
    """SetFit's own settings (model.method: setfit). The training section still gives the batch size, the
    body's learning rate (training.learning_rate; default 2e-5), warmup, weight decay and the seed;
    training.epochs, batching, early stopping and checkpoints do not apply (SetFit trains in one go)."""

    iterations: int | None = Field(
        20, ge=1, description="Pairs drawn per training example: 2 x iterations (one similar, one dissimilar "
        "pair each time); null: `sampling` decides.")
    sampling: Literal["oversampling", "undersampling", "unique"] = Field(
        "oversampling", description="Which pairs when iterations is null: oversampling (every pair at least once, "
        "as many similar as dissimilar), undersampling, or unique (every pair once).")
    body_epochs: int = Field(1, ge=1, description="Passes of contrastive training over the pairs.")
    head: Literal["logistic", "differentiable"] = Field(
        "logistic", description="logistic: scikit-learn logistic regression on the tuned embeddings (SetFit's "
        "default); differentiable: a torch linear head trained with gradient descent.")
    head_epochs: int = Field(16, ge=1, description="Epochs of the differentiable head (logistic ignores it).")
    head_learning_rate: float = Field(1e-2, gt=0.0, description="Learning rate of the differentiable head.")
    end_to_end: bool = Field(
        False, description="Differentiable head: also train the encoder while the head trains.")


class TextClassifierModel(ModelSpec):
    setfit: SetFitSpec = Field(default_factory=SetFitSpec, description="SetFit settings, used when method is setfit.")


class TextClassificationSpec(RunSpec):
    RULES: ClassVar[TaskRules] = TaskRules(methods=("full", "lora", "setfit"), batchings=("length-mixed", "random"),
                                           metrics=("macro_f1", "accuracy", "micro_f1"), max_length=256,
                                           learning_rates={"full": 2e-5, "lora": 2e-4, "setfit": 2e-5},
                                           learning_rate_by_width=ENCODER_LEARNING_RATES)
    FAMILY: ClassVar[str] = base.CLASSIFY

    model: TextClassifierModel = Field(default_factory=TextClassifierModel,
                                       description="Base model (an encoder) and adaptation method.")
    data: LabelledTextData = Field(..., description="Where the labelled texts come from and how to read them.")
    training: ClassifierTraining = Field(default_factory=ClassifierTraining, description="Optimisation settings.")
    evaluation: TextClassifierEvaluation = Field(default_factory=TextClassifierEvaluation,
                                                 description="How models are scored.")

    @model_validator(mode="after")
    def _setfit_single_label(self) -> "TextClassificationSpec":
        if self.model.method == "setfit" and self.data.multi_label:
            raise ValueError("model.method setfit supports single-label data (data.multi_label: false); "
                             "for multi-label data use method full or lora")
        return self


@register_task("text-classification")
class TextClassification(LabelOutputs):
    family = base.CLASSIFY
    library = "transformers"
    pipeline_tag = "text-classification"
    spec_class = TextClassificationSpec
    template_values: ClassVar[dict[str, Any]] = {"data": {"train": "bbc-news"}}
    input_kind = "text"
    routes = ("/v1/classify", "/v1/embeddings")
    capabilities = frozenset({base.EVALUATE, base.PREDICT, base.EMBED, base.ONNX, base.DRIFT})
    checkpoint_everything = False

    def __init__(self, labels: list[str], multi_label: bool = False, max_length: int = 256,
                 method: str = "full", trust_pickle: bool = False) -> None:
        self.space = LabelSpace(labels, multi_label)
        self.labels, self.multi_label, self.label2id = self.space.labels, multi_label, self.space.label2id
        self.max_length, self.method = max_length, method
        self.trust_pickle = trust_pickle  # model.trust_pickle: the base may be read from pickle weights
        self.tokenizer: Any = None

    @classmethod
    def from_spec(cls, spec: Any, labels: list[str] | None = None) -> "TextClassification":
        return cls(list(labels or spec.data.labels or []), spec.data.multi_label, spec.data.max_length,
                   spec.model.method, spec.model.trust_pickle)

    @classmethod
    def prepare_data(cls, spec: Any, base: str | None, force: bool, tokenizer: Any = None) -> Any:
        from tunelab.data import prepare

        if tokenizer is None and base is not None:  # the base model's tokenizer measures lengths (too-long check)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base)
        return prepare(spec.data, spec.training.seed, force, tokenizer=tokenizer)

    # -- model -------------------------------------------------------------------------------
    def load_model(self, folder: str) -> Any:
        """Base encoder with a fresh classification head sized for our labels."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tunelab.catalog import hub_error
        from tunelab.run.weights import base_weights

        use_safetensors = base_weights(folder, self.trust_pickle)  # pickle-only weights: refused, unless trusted
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            return AutoModelForSequenceClassification.from_pretrained(folder, ignore_mismatched_sizes=True,
                                                                      use_safetensors=use_safetensors, **self._head())
        except OSError as err:
            if Path(folder).is_dir():
                raise
            raise hub_error(folder, err) from None

    def _head(self) -> dict[str, Any]:
        """The classification head's settings: one output per label."""
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)), "label2id": self.label2id,
                "problem_type": "multi_label_classification" if self.multi_label else "single_label_classification"}

    def empty_model(self, folder: str, device_type: str) -> Any:
        """The encoder and head of load_model on the meta device (config only; weights stay on disk). Trained in
        the checkpoint's own dtype on every device, as load_model does."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder, **self._head())
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)

    def apply_method(self, model: Any, spec: Any) -> Any:
        from tunelab.train import methods

        return methods.apply(model, spec, peft_task_type="SEQ_CLS")

    def param_groups(self, model: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from tunelab.train.methods import get_method

        return get_method(self.method).groups(model, lr, weight_decay)

    def on_epoch_start(self, model: Any, epoch: int, first_batch: int = 0) -> None:
        """Nothing changes between epochs."""

    # -- data ---------------------------------------------------------------------------------
    def target(self, label: Any) -> Any:
        return self.space.target(label)

    def encode(self, ds: Any, with_labels: bool = True) -> EncodedSplit:
        enc = self.tokenizer(list(ds["text"]), truncation=True, max_length=self.max_length)
        features = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        strata = ["?"] * len(features)
        if with_labels:
            for f, label in zip(features, ds["label"]):
                f["labels"] = self.target(label)
            strata = self.space.strata(ds["label"])
        return EncodedSplit(features, strata)

    def collator(self) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def train_loader(self, encoded: EncodedSplit, spec: Any) -> tuple[Any, Any]:
        return classifier_train_loader(encoded, self.collator(), spec)

    # -- outputs -> predictions -> metrics ------------------------------------------------------
    def truth(self, ds: Any) -> np.ndarray:
        return self.space.truth(list(ds["label"]))

    def format_predictions(self, texts: list[str], logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        return self.space.format_predictions(texts, logits, top_k)

    def report_extras(self, model: Any, split: Any, logits: np.ndarray) -> dict[str, Any]:
        return {}

    def read_labelled(self, source: str, spec: Any) -> Any:
        """A labelled table to score the run on; the doctor's errors (but single-class) stop it."""
        from tunelab.data import DataError, read_source
        from tunelab.data.doctor import DoctorContext, run_checks

        ds = read_source(source, spec.data.text_column, spec.data.label_column, spec.data.multi_label,
                         spec.data.label_separator)
        errors = [f for f in run_checks(DoctorContext({"data": ds}, self.labels, spec.data.multi_label))
                  if f.severity == "error" and f.check != "single-class"]
        if errors:
            raise DataError(f"{source}: cannot score:\n" + "\n".join(f.render() for f in errors))
        return ds

    # -- baseline -------------------------------------------------------------------------------
    def baseline(self, folder: str, train: Any, splits: dict[str, Any], spec: Any) -> tuple[str, dict[str, Any]]:
        """Score the untuned model: zero-shot by nearest label-name embedding for a sentence encoder,
        otherwise the majority class of the training data. Returns (method description, metrics per split)."""
        from tunelab.catalog import is_sentence_encoder

        template = spec.evaluation.zero_shot_template
        if is_sentence_encoder(folder):
            predict, method = self._zero_shot(folder, template, train), f"zero-shot: nearest label embedding ('{template}')"
        else:
            majority = self.space.majority(list(train["label"]))
            predict, method = (lambda texts: majority(len(texts))), "majority class of the training data"
        return method, {name: self.space.scored(self.truth(ds), predict(list(ds["text"]))) for name, ds in splits.items()}

    def _zero_shot(self, folder: str, template: str, train: Any = None):
        from sentence_transformers import SentenceTransformer

        from tunelab.run.weights import base_weights

        encoder = SentenceTransformer(folder, device="cpu",
                                      model_kwargs={"use_safetensors": base_weights(folder, self.trust_pickle)})
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

    # -- saving and inference from a saved folder -------------------------------------------------
    def save(self, model: Any, run_dir: RunDir) -> None:
        """model/: plain transformers folder (LoRA merged); adapter/: the peft adapter for LoRA runs."""
        from tunelab.run.files import atomic_dir
        from tunelab.train import methods

        if methods.is_peft(model):
            with atomic_dir(run_dir.adapter) as tmp:
                model.save_pretrained(tmp)
        with atomic_dir(run_dir.model) as tmp:
            methods.merged(model).save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)

    @staticmethod
    def load_saved(model_dir: str | Path) -> tuple[Any, Any]:
        """A saved run model, loaded with plain transformers from safetensors only (a SetFit run's model is
        tunelab's SentenceClassifier, which the Auto classes learn here: tunelab.fewshot.model)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tunelab.fewshot.model import register_auto
        from tunelab.run.weights import check_safetensors

        check_safetensors(Path(model_dir), depth=0)  # names the file and the fix; transformers' own error does not
        register_auto()
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        return model.eval(), AutoTokenizer.from_pretrained(model_dir)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, max_length: int = 256) -> tuple["TextClassification", Any]:
        """(task, model) from a model folder (a run's model/ or any fine-tuned classifier folder)."""
        model, tokenizer = cls.load_saved(model_dir)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task = cls(labels, model.config.problem_type == "multi_label_classification", max_length)
        task.tokenizer = tokenizer
        return task, model

    @classmethod
    def from_saved(cls, run_dir: RunDir, spec: Any) -> tuple["TextClassification", Any]:
        """The run's model (safetensors only); the task trusts the base's pickle weights (for re-scoring the
        baseline) only when the run was trained with model.trust_pickle."""
        task, model = cls.from_model_dir(run_dir.find_model(), spec.data.max_length)
        task.trust_pickle = spec.model.trust_pickle
        return task, model
