"""The Task protocol: everything the recipes, the server, export and evaluation ask of a task.

An interface, not a base class (torchtune's `recipe_interfaces.py` in spirit): a task is any class that
has these members, and behaviour that tasks share is composed from helpers (tunelab.tasks.labels,
tunelab.vision, tunelab.lm), never inherited from another task. Every member is implemented by every
task (a no-op where it does not apply), so callers never probe with `hasattr`.

Two families, one recipe each (tunelab.recipes): `classify` (a label per example: the model maps a batch
to logits) and `causal-lm` (the model continues text). The family protocols add what only their
recipe asks for.

Task modules import only light libraries at module level (pydantic, numpy): the registry and every
task's spec schema load in well under a second, so `tunelab init` and spec validation never wait for
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from tunelab.spec.schema import RunSpec

if TYPE_CHECKING:
    from tunelab.run import RunDir

CLASSIFY = "classify"
CAUSAL_LM = "causal-lm"

# What a task's runs can be used for beyond training (checked by the step that needs it, not by task name)
EVALUATE = "evaluate"  # re-scored on held-out or new labelled data (`tunelab evaluate`)
PREDICT = "predict"  # labels for new inputs (`tunelab predict`, /v1/classify)
EMBED = "embed"  # sentence embeddings from the fine-tuned encoder (/v1/embeddings)
ONNX = "onnx"  # exported to ONNX Runtime, verified (`tunelab export --onnx`, `serve --runtime onnx`)
DRIFT = "drift"  # request-log drift checks on text inputs (`tunelab monitor`)
GENERATE = "generate"  # answers prompts (`tunelab generate`, /v1/completions)
MERGE = "merge"  # a merged plain-transformers export with a parity check (`tunelab export --merge`)


@runtime_checkable
class Task(Protocol):
    """What every task provides. Instances hold the per-run state (labels, tokenizer, image processing)."""

    name: ClassVar[str]  # the spec's `task:` value (set by @register_task)
    family: ClassVar[str]  # CLASSIFY or CAUSAL_LM: which recipe trains it
    library: ClassVar[str]  # what loads model/: transformers (plain Hugging Face folder) or tunelab
    pipeline_tag: ClassVar[str]  # the Hugging Face pipeline tag of the model card
    spec_class: ClassVar[type[RunSpec]]  # the task's own spec schema, with its defaults (tunelab.spec)
    template_values: ClassVar[dict[str, Any]]  # values `tunelab init TASK` fills in beside the defaults
    input_kind: ClassVar[str]  # what one example is: text, image, text+image, messages
    routes: ClassVar[tuple[str, ...]]  # what `tunelab serve` exposes for a run of this task
    capabilities: ClassVar[frozenset[str]]  # EVALUATE, PREDICT, EMBED, ONNX, DRIFT, GENERATE, MERGE
    checkpoint_everything: ClassVar[bool]  # checkpoints hold every weight (the trained set changes mid-run)

    @classmethod
    def from_spec(cls, spec: RunSpec, labels: list[str] | None = None) -> "Task":
        """The task for a run of SPEC (LABELS: the label names found in the data, for classifiers)."""
        ...

    @classmethod
    def prepare_data(cls, spec: RunSpec, base: str | None, force: bool, tokenizer: Any = None) -> Any:
        """Read, check (the data doctor) and split the spec's data: a tunelab.data.Prepared. TOKENIZER (the
        task's own, when it has one already) measures lengths; otherwise the tokenizer of BASE (a local
        folder) does, and with neither the length checks are skipped (re-scoring a finished run)."""
        ...

    def load_model(self, base: str) -> Any:
        """The base model (a local folder), set up for this task; loads the tokenizer/processing too."""
        ...

    def empty_model(self, base: str, device_type: str) -> Any:
        """The model load_model would build, without reading its weights (on the meta device), as it would be
        set up to train on DEVICE_TYPE (cuda, cpu: the dtype depends on it): the planner (`tunelab plan`)
        counts its parameters and bytes before any training. Loads the tokenizer/processing too. Small models
        built by tunelab itself (the image models) may be built for real."""
        ...

    def apply_method(self, model: Any, spec: RunSpec) -> Any:
        """The model to train under spec.model.method (tunelab.train.methods)."""
        ...

    def encode(self, ds: Any, with_labels: bool = True) -> Any:
        """A split as model inputs (a sized, indexable dataset with `lengths`)."""
        ...

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Batches for scoring (deterministic: no augmentation)."""
        ...

    def train_loader(self, encoded: Any, spec: RunSpec) -> tuple[Any, Any]:
        """(DataLoader, sampler with set_epoch) for training in the spec's batching mode."""
        ...

    def param_groups(self, model: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (tunelab.train.optim has the one weight-decay rule)."""
        ...

    def on_epoch_start(self, model: Any, epoch: int, first_batch: int = 0) -> None:
        """Per-epoch changes (gradual unfreezing, augmentation seeds); a no-op for most tasks. FIRST_BATCH is
        the index of the epoch's first batch this process will see: non-zero when a run resumes half-way
        through an epoch, so per-batch randomness (augmentation) continues where it stopped."""
        ...

    def training_step(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(loss to back-propagate, what the epoch's training metrics need from this batch, or None)."""
        ...

    def train_metrics(self, seen: list[Any]) -> dict[str, Any]:
        """Training-set metrics of one epoch from the training_step outputs it saw ({} when none)."""
        ...

    def save(self, model: Any, run_dir: RunDir) -> None:
        """Write the trained model into the run directory (model/, adapter/), safetensors only."""
        ...

    @classmethod
    def from_saved(cls, run_dir: RunDir, spec: RunSpec) -> tuple["Task", Any]:
        """(task, model) from a finished run directory (its model/, adapter/ or verified export), for
        evaluation, prediction and serving."""
        ...


@runtime_checkable
class ClassifierTask(Task, Protocol):
    """The classify family: a batch of inputs -> logits over the labels."""

    labels: list[str]
    multi_label: bool
    tokenizer: Any  # None when the inputs hold no text
    max_length: int  # tokens a text is cut to (0 when the inputs hold no text)

    def baseline(self, base: str, train: Any, splits: dict[str, Any], spec: RunSpec) -> tuple[str, dict[str, Any]]:
        """The untuned model scored on SPLITS (the same held-out examples as the fine-tuned one), fitted on
        TRAIN where it needs data (majority class, centroids): (method in words, metrics per split, each with
        the baseline's per-example "predictions" for the promotion gate's paired interval)."""
        ...

    def use_class_weights(self, weights: list[float] | None) -> None:
        """Weight the training loss per label id (None: unweighted); the recipe decides (tunelab.auto.defaults)."""
        ...

    def truth(self, ds: Any) -> Any:
        """Label ids (or multi-hot rows) of a split, in the metric's format."""
        ...

    def predict_ids(self, logits: Any) -> Any:
        ...

    def metrics(self, y_true: Any, y_pred: Any) -> dict[str, Any]:
        ...

    def loss(self, logits: Any, truth: Any) -> float:
        ...

    def scores(self, logits: Any) -> Any:
        """Probabilities from logits (softmax, or sigmoid per label for multi-label)."""
        ...

    def format_predictions(self, inputs: list[str], logits: Any, top_k: int = 3) -> list[dict[str, Any]]:
        ...

    def report_extras(self, model: Any, split: Any, logits: Any) -> dict[str, Any]:
        """Further report content from the test split's logits (thumbnails, more baselines); {} if none."""
        ...

    def read_labelled(self, source: str, spec: RunSpec) -> Any:
        """A labelled file to score a run on (`tunelab evaluate RUN --data FILE`), checked by the doctor."""
        ...


@runtime_checkable
class GeneratorTask(Task, Protocol):
    """The causal-lm family: text in, text out; judged by loss on held-out answers and by generated answers."""

    tokenizer: Any

    def load_tokenizer(self, base: str) -> Any:
        ...

    def prompts(self, ds: Any, spec: RunSpec) -> list[dict[str, Any]]:
        """Held-out prompts with reference answers (base and fine-tuned model answer the same ones)."""
        ...

    def prompt_ids(self, text: str, system: str | None = None, history: list[dict[str, str]] | None = None) -> list[int]:
        """A prompt rendered exactly as in training."""
        ...

    def in_context_prompts(self, train: Any, prompts: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
        """PROMPTS with K examples of TRAIN shown before each (the same K for every prompt, drawn with SEED),
        within max_length, each with "shots" (how many it kept): the in-context rung of `tunelab auto`."""
        ...

    def evaluate_loss(self, model: Any, encoded: Any, batch_size: int, desc: str = "validation",
                      show: bool = True) -> dict[str, Any]:
        ...

    def preview(self, tokenizer: Any, row: dict[str, Any], spec: RunSpec) -> Any:
        """One training example rendered as the model sees it (`tunelab data preview`)."""
        ...

    def describe_loss(self, spec: RunSpec) -> str:
        """Which tokens carry the loss, in words (data preview, model card)."""
        ...


FAMILY_PROTOCOLS: dict[str, type] = {CLASSIFY: ClassifierTask, CAUSAL_LM: GeneratorTask}

TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Register a task class under NAME (the spec's `task:` value); its spec schema learns its name too."""

    def wrap(cls: type) -> type:
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str) -> Any:
    """The task class for NAME; the error lists the available tasks."""
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; available: {', '.join(TASKS)}")
    return TASKS[name]
