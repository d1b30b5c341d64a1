"""The run spec: one YAML file that says what to fine-tune, on which data, and how.

Validated by pydantic. Defaults encode good practice (small learning rates with 10% warmup and linear
decay, weight decay 0.01, evaluation every epoch on the task metric, early stopping, best checkpoint
restored, fixed seed), so a spec only needs the task, the base model and the data. Unknown keys are
errors that name the closest valid key, because a typo silently ignored is a training run wasted.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4}
IMAGE_LR = {"linear-probe": 1e-3, "lora": 1e-3}  # image models: everything else 3e-4
GENERATIVE_TASKS = ("chat", "completion")
IMAGE_TASKS = ("image-classification", "text-image-classification")
METHODS_BY_KIND = {"text": ("full", "lora"), "generative": ("lora", "dora", "full", "qlora"),
                   "image": ("full", "linear-probe", "gradual-unfreeze", "discriminative", "lora")}
LM_BATCHING = ("padding-free", "packing", "padded")
CLASSIFIER_BATCHING = ("length-mixed", "random")
GENERATION_METRICS = ("rouge_l", "token_f1", "exact_match")


class SpecError(ValueError):
    """A spec that cannot be used; the message says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSpec(_Section):
    r: int = Field(16, ge=1, description="LoRA rank: the size of the low-rank update.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of module names."
    )


class ModelSpec(_Section):
    base: str = Field(
        "all-MiniLM-L6-v2",
        description="Base model: a bundled name (see `tunelab models`), a local Hugging Face folder, or a hub id.",
    )
    method: Literal["full", "lora", "dora", "qlora", "linear-probe", "gradual-unfreeze", "discriminative"] | None = Field(
        None,
        description="full: update every weight. lora: low-rank adapters (peft), base frozen. dora: weight-decomposed "
        "LoRA. qlora: LoRA on a 4-bit base (bitsandbytes, CUDA only). Image models also: linear-probe (head only), "
        "gradual-unfreeze (one more layer group per epoch, from the top), discriminative (lower learning rates for "
        "lower layers). Default: full for classifiers, lora for LLMs.",
    )
    image_base: str = Field(
        "efficientnet-lite0", description="text-image-classification: the image backbone (model.base is the text encoder)."
    )
    freeze_encoders: bool = Field(
        False, description="text-image-classification: keep both pre-trained encoders frozen and train the fusion head only."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings, used when method is lora.")


class SplitSpec(_Section):
    validation: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for validation when no file is given.")
    test: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for test when no file is given.")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "SplitSpec":
        if self.validation + self.test >= 0.9:
            raise ValueError("split.validation + split.test must leave at least 10% for training")
        return self


class DataSpec(_Section):
    train: str = Field(
        ...,
        description="Training data: a CSV/TSV/JSONL/Parquet file, a `datasets` folder (save_to_disk), "
        "or a bundled set: bbc-news, tweet-sentiment.",
    )
    validation: str | None = Field(None, description="Validation data; split from train (stratified) when absent.")
    test: str | None = Field(None, description="Test data; split from train (stratified) when absent.")
    text_column: str = Field("text", description="Column holding the text.")
    image_column: str = Field("image", description="Column holding the image path (image tasks; relative to the table).")
    image_size: int | None = Field(
        None, ge=8, description="Image tasks: train and predict at this square size. Default: the model's own (224)."
    )
    augment: Literal["default", "no-flip", "none"] = Field(
        "default", description="Image tasks: training augmentation (random resized crop, flip, colour jitter); "
        "no-flip for digits, text and other images a mirror changes; none to switch it off."
    )
    label_column: str = Field("label", description="Column holding the label (a name or an integer id).")
    labels: list[str] | None = Field(
        None, description="Label names in id order. Inferred (sorted) from training data when absent."
    )
    multi_label: bool = Field(False, description="Each example may carry several labels.")
    label_separator: str = Field(
        "|", description="Separator of several labels in one text cell (multi-label CSV/TSV); JSON may use lists."
    )
    split: SplitSpec = Field(default_factory=SplitSpec, description="Shares split off when only one file is given.")
    limit: int | None = Field(
        None, ge=2, description="Use a stratified sample of this many training-source examples (quick trials)."
    )
    max_length: int | None = Field(
        None, ge=8, description="Examples are truncated to this many tokens. Default: 256 for classifiers, 1024 for LLMs."
    )
    format: Literal["auto", "messages", "alpaca", "sharegpt"] = Field(
        "auto", description="Chat data layout: OpenAI messages, Alpaca instruction/input/output, ShareGPT conversations."
    )
    train_on: Literal["all-assistant", "last-assistant", "all"] = Field(
        "all-assistant", description="Chat tokens that carry the loss: every assistant turn, the last one, or everything."
    )
    chat_template: str | None = Field(
        None, description="Chat template: null uses the base model's own; 'chatml' or a Jinja string when it has none."
    )


class TrainingSpec(_Section):
    epochs: int = Field(3, ge=1, description="Maximum number of passes over the training data.")
    learning_rate: float | None = Field(
        None, gt=0.0, description="Peak learning rate. Default: 2e-5 for full fine-tuning, 2e-4 for LoRA."
    )
    batch_size: int = Field(16, ge=1, description="Examples per optimisation step (per process).")
    eval_batch_size: int = Field(64, ge=1, description="Examples per forward pass when scoring.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimiser step.")
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps with linear warmup; then linear decay.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many epochs without a better validation metric; null disables."
    )
    batching: Literal["length-mixed", "random", "padding-free", "packing", "padded"] | None = Field(
        None,
        description="Classifiers: length-mixed (similar lengths, labels mixed; default) or random. LLMs: padding-free "
        "(examples concatenated, no attention across them; default), packing (rows filled to max_length) or padded.",
    )
    checkpoint_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimiser steps (a checkpoint is always written each epoch)."
    )
    seed: int = Field(42, description="Seed for data order, initialisation and dropout.")


class GenerationSpec(_Section):
    prompts: int = Field(16, ge=0, description="Held-out prompts answered by the base and the fine-tuned model (0: none).")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer, in tokens (greedy decoding).")
    every_epoch: bool = Field(
        False, description="Also generate on validation prompts each epoch (needed when metric is a generation metric)."
    )


class EvaluationSpec(_Section):
    metric: Literal["macro_f1", "accuracy", "micro_f1", "loss", "rouge_l", "token_f1", "exact_match"] | None = Field(
        None, description="Metric for early stopping, best-checkpoint choice and the baseline comparison. Default: "
        "macro_f1 for classifiers, validation loss for LLMs (rouge_l, token_f1, exact_match also work)."
    )
    baseline: bool = Field(True, description="Score the untuned base model on the same validation and test examples.")
    zero_shot_template: str = Field(
        "{label}", description="How a label name is phrased for the zero-shot baseline of a sentence encoder."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Generation on held-out prompts (LLMs).")


class MonitorSpec(_Section):
    min_requests: int = Field(30, ge=1, description="Fewer logged requests than this: report, but raise no drift alert.")
    length_shift: float = Field(0.3, gt=0.0, description="Alert when the mean input length moves by more than this share.")
    oov_increase: float = Field(0.05, ge=0.0, description="Alert when the out-of-vocabulary rate rises by more than this.")
    embedding_p_value: float = Field(0.01, gt=0.0, lt=1.0, description="Alert when the embedding two-sample test's "
                                     "p-value falls below this.")
    label_shift: float = Field(0.15, gt=0.0, description="Alert when predicted labels' total variation distance from "
                               "the validation labels exceeds this.")
    confidence_drop: float = Field(0.1, gt=0.0, description="Alert when mean top score falls by more than this.")
    error_rate: float = Field(0.05, ge=0.0, description="Alert when the share of failed requests exceeds this.")
    latency_p99_ms: float = Field(2000.0, gt=0.0, description="Alert when the 99th-percentile latency exceeds this.")


class OutputSpec(_Section):
    dir: str = Field("runs", description="Folder that holds run directories.")


class RunSpec(_Section):
    name: str | None = Field(None, description="Run name: the run directory is <output.dir>/<name>. Default: spec file stem.")
    task: Literal["text-classification", "chat", "completion", "image-classification", "text-image-classification"] = Field(
        ..., description="What the model learns to do: text-classification, chat (instructions, multi-turn), completion, "
        "image-classification, or text-image-classification (a text and an image per example)."
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model and adaptation method.")
    data: DataSpec = Field(..., description="Where the examples come from and how to read them.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="How models are scored.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    monitor: MonitorSpec = Field(default_factory=MonitorSpec, description="Thresholds of `tunelab monitor` alerts.")

    @model_validator(mode="after")
    def _task_defaults(self) -> "RunSpec":
        """Fill the defaults that depend on the task, and refuse settings that do not fit it."""
        generative = self.task in GENERATIVE_TASKS
        kind = "generative" if generative else "image" if self.task in IMAGE_TASKS else "text"
        if self.model.method is None:
            self.model.method = "lora" if generative else "full"
        if self.model.method not in METHODS_BY_KIND[kind]:
            raise ValueError(f"model.method '{self.model.method}' does not apply to {self.task}; "
                             f"use one of {', '.join(METHODS_BY_KIND[kind])}")
        if self.data.max_length is None:
            self.data.max_length = 1024 if generative else 256
        if self.training.batching is None:
            self.training.batching = "padding-free" if generative else "length-mixed"
        if self.evaluation.metric is None:
            self.evaluation.metric = "loss" if generative else "macro_f1"
        allowed_batching = LM_BATCHING if generative else CLASSIFIER_BATCHING
        if self.training.batching not in allowed_batching:
            raise ValueError(f"training.batching '{self.training.batching}' does not apply to {self.task}; "
                             f"use one of {', '.join(allowed_batching)}")
        allowed_metrics = ("loss", *GENERATION_METRICS) if generative else ("macro_f1", "accuracy", "micro_f1")
        if self.evaluation.metric not in allowed_metrics:
            raise ValueError(f"evaluation.metric '{self.evaluation.metric}' does not apply to {self.task}; "
                             f"use one of {', '.join(allowed_metrics)}")
        return self

    @property
    def generative(self) -> bool:
        return self.task in GENERATIVE_TASKS

    @property
    def lower_is_better(self) -> bool:
        """Whether the chosen metric improves downwards (loss) rather than upwards (F1, ROUGE)."""
        return self.evaluation.metric == "loss"

    @property
    def learning_rate(self) -> float:
        """The effective peak learning rate: the spec's, or the method's default."""
        if self.training.learning_rate:
            return self.training.learning_rate
        if self.task in IMAGE_TASKS:
            return IMAGE_LR.get(self.model.method, 3e-4)
        return DEFAULT_LR[self.model.method]

    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.name or "run")


def _closest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Walk the schema along loc and suggest the valid key nearest to the last element."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if current else None
        annotation = field.annotation if field else None
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if current is None:
        return ""
    match = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(current.model_fields)}"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid spec"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key{_closest_key(RunSpec, e['loc'])}")
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> RunSpec:
    """Validate a spec given as a dict; errors name each bad key and the closest valid one."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a YAML spec. Relative data paths are resolved against the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    spec = parse_spec(raw, str(path))
    if spec.name is None:
        spec.name = path.stem
    for field in ("train", "validation", "test"):
        value = getattr(spec.data, field)
        if value and not Path(value).is_absolute() and (path.parent / value).exists():
            setattr(spec.data, field, str((path.parent / value).resolve()))
    return spec


def dump_spec(spec: RunSpec) -> str:
    """The resolved spec as YAML, defaults filled in, as stored in the run directory."""
    data = spec.model_dump(mode="json")
    data["training"]["learning_rate"] = spec.learning_rate
    return yaml.safe_dump(data, sort_keys=False)


def _commented(model: type[BaseModel], indent: int, overrides: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        desc = field.description or ""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{pad}# {desc}")
            lines.append(f"{pad}{name}:")
            lines.extend(_commented(annotation, indent + 1, overrides.get(name, {})))
            continue
        value = overrides.get(name, None if field.is_required() else field.get_default(call_default_factory=True))
        rendered = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{pad}{rendered:<40} # {desc}")
    return lines


def template(task: str) -> str:
    """A commented spec for TASK, generated from the schema so it never falls out of date."""
    tasks = ("text-classification", *GENERATIVE_TASKS, *IMAGE_TASKS)
    if task not in tasks:
        raise SpecError(f"unknown task '{task}'; available: {', '.join(tasks)}")
    if task == "text-classification":
        overrides = {"task": task, "name": "my-run", "data": {"train": "bbc-news"}}
    elif task == "image-classification":
        overrides = {"task": task, "name": "my-run", "data": {"train": "mnist-5k"},
                     "model": {"base": "efficientnet-lite0"}}
    elif task == "text-image-classification":
        overrides = {"task": task, "name": "my-run", "data": {"train": "pairs.csv"}}
    else:
        train = "construction-faq" if task == "chat" else "my-texts.txt"
        overrides = {"task": task, "name": "my-run", "data": {"train": train},
                     "model": {"base": "SmolLM2-135M-Instruct"}}
    header = [f"# tunelab run spec for {task}. Generated by `tunelab init {task}`.",
              "# Every key is optional except task and data.train; the values shown are the defaults."]
    return "\n".join(header + _commented(RunSpec, 0, overrides)) + "\n"
