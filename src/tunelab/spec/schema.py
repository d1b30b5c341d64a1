"""The sections every run spec shares, and the base that each task's spec extends.

A task contributes its own spec (tunelab.tasks.<task>: a `RunSpec` subclass with its own `data`, `model`,
`training` and `evaluation` sections and its `TaskRules`), so a text-classification spec has no image
keys and an image key in a chat spec is an unknown key. This module names no task: it holds what all of
them have in common. Defaults encode good practice (small learning rates with 10% warmup and linear
decay, weight decay 0.01, evaluation every epoch on the task metric, early stopping, best checkpoint
restored, fixed seed), so a spec only needs the task, the base model and the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.run.disk import check_run_name, confined_run_dir


class SpecError(ValueError):
    """A spec that cannot be used; the message says where and how to fix it."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|min|m|s)")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}


def duration_seconds(value: Any, where: str = "duration") -> float | None:
    """Seconds in VALUE: a number (seconds) or a duration string ("90", "45s", "10m", "1h30m", "1.5h", "2d"), so
    a time limit or budget reads the way people say it, in a spec and on the command line (None stays None).
    SpecError (a ValueError) names WHERE and the accepted forms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpecError(f"{where} {value!r}: not a duration; write seconds (90) or e.g. 45s, 10m, 1h30m")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if _SECONDS.fullmatch(text):  # plain seconds: "90", "1.5"
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise SpecError(f"{where} '{value}': not a duration; write seconds (90) or e.g. 45s, 10m, 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


class Section(BaseModel):
    """A spec section: unknown keys are errors (a typo silently ignored is a training run wasted)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSpec(Section):
    r: int = Field(16, ge=1, description="LoRA rank: the size of the low-rank update.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of module names."
    )


class ModelSpec(Section):
    base: str = Field(
        "all-MiniLM-L6-v2",
        description="Base model: a bundled name (see `tunelab models`), a local Hugging Face folder, or a hub id.",
    )
    method: str | None = Field(None, description="How the base model is adapted (the task lists its methods).")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings, used when method is lora.")
    trust_pickle: bool = Field(
        False, description="Load the base model even where its weights are pickle files (.bin/.pt), which can run "
        "code when loaded; only for a folder you vetted yourself (`tunelab train --trust-pickle` sets it; better: "
        "`tunelab convert-weights FOLDER` once). Warned about and recorded in run.json.")


class SplitSpec(Section):
    validation: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for validation when no file is given.")
    test: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for test when no file is given.")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "SplitSpec":
        if self.validation + self.test >= 0.9:
            raise ValueError("split.validation + split.test must leave at least 10% for training")
        return self


class DataSpec(Section):
    """The data keys every task has: where the examples are, how they are split, how long they may be."""

    train: str = Field(
        ...,
        description="Training data: a CSV/TSV/JSONL/Parquet file, a `datasets` folder (save_to_disk), "
        "or a bundled set (see `tunelab models`).",
    )
    validation: str | None = Field(None, description="Validation data; split from train (stratified) when absent.")
    test: str | None = Field(None, description="Test data; split from train (stratified) when absent.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Shares split off when only one file is given.")
    limit: int | None = Field(
        None, ge=2, description="Use a stratified sample of this many training-source examples (quick trials)."
    )
    max_length: int | None = Field(None, ge=8, description="Examples are truncated to this many tokens.")


MAX_BATCH = 8192  # examples per batch per process: the spec's ceiling for batch_size and eval_batch_size


class TrainingSpec(Section):
    epochs: int = Field(3, ge=1, description="Maximum number of passes over the training data.")
    learning_rate: float | None = Field(
        None, gt=0.0, description="Peak learning rate; null: chosen by method and the base model's width "
        "(docs/defaults.md), recorded with its reason in evaluation.json."
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
    batching: str | None = Field(None, description="How examples are put into batches (the task lists its modes).")
    checkpoint_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimiser steps (a checkpoint is always written each epoch)."
    )
    seed: int = Field(42, description="Seed for data order, initialisation and dropout.")
    time_limit: float | None = Field(
        None, gt=0.0, description="Stop training after this long (seconds, or a duration like 10m or 1h30m): the "
        "current step finishes, then validation, a checkpoint, and the best epoch is kept, as with early stopping; "
        "null: no limit.")

    @field_validator("time_limit", mode="before")
    @classmethod
    def _parse_time_limit(cls, value: Any) -> float | None:
        return duration_seconds(value, "training.time_limit")

    @field_validator("batch_size", "eval_batch_size")
    @classmethod
    def _batch_fits_a_device(cls, value: int) -> int:
        # Checked here, not against the training set's size: a batch larger than the data is harmless (one step
        # per epoch), while 10^9 examples in one forward pass runs out of memory only after the data is read and
        # the model loaded. No device holds more than MAX_BATCH examples of a transformer at once.
        if value > MAX_BATCH:
            raise ValueError(f"{value:,} examples in one batch will not fit in any device's memory (at most "
                             f"{MAX_BATCH:,}); for a larger effective batch raise gradient_accumulation_steps")
        return value


class EvaluationSpec(Section):
    metric: str | None = Field(
        None, description="Metric for early stopping, best-checkpoint choice and the baseline comparison."
    )
    baseline: bool = Field(True, description="Score the untuned base model on the same validation and test examples.")


class MonitorSpec(Section):
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


class EnergySpec(Section):
    track: bool = Field(True, description="Record the run's energy (kWh) and CO2 in run.json, the report and the "
                        "model card: measured by RAPL / NVML where readable, else estimated from CPU time (and said so).")
    grid_intensity: float | None = Field(
        None, gt=0.0, description="Carbon intensity of your electricity in gCO2e/kWh; null: the world average, "
        "475 (IEA Global Energy & CO2 Status Report 2019).")


class OutputSpec(Section):
    dir: str = Field("runs", description="Folder that holds run directories.")


class ParamRange(Section):
    """One searched hyperparameter: a range (low, high; log for a log-uniform draw; step for a grid) or a list
    of choices. In a spec's search.space only the keys given replace the default's."""

    low: float | None = Field(None, description="Smallest value (with high).")
    high: float | None = Field(None, description="Largest value (with low).")
    log: bool | None = Field(None, description="Draw on a log scale (learning rates).")
    step: float | None = Field(None, gt=0.0, description="Grid step within low..high.")
    choices: list[float | int | str] | None = Field(None, min_length=1, description="Draw one of these values "
                                                    "instead of a range.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "ParamRange":
        if self.choices is not None and (self.low is not None or self.high is not None):
            raise ValueError("give either low/high or choices, not both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step:
            raise ValueError("a log range takes no step")
        return self


class SearchSpec(Section):
    """`tunelab tune`: the hyperparameter search (Optuna). The default space depends on the task and method
    (`tunelab tune --help` and the README list it); `space` narrows or extends it."""

    trials: int = Field(20, ge=1, description="Trials to finish (completed + pruned); a resumed study continues "
                        "until this many. --trials overrides.")
    timeout: float | None = Field(None, gt=0, description="Stop starting trials after this long: seconds, or "
                                  "'30m', '2h'. --timeout overrides.")
    space: dict[str, ParamRange | None] = Field(
        default_factory=dict, description="Per searched parameter (learning_rate, epochs, batch_size, warmup, "
        "weight_decay, lora_r, lora_alpha, lora_dropout): a range or choices replacing the default's keys; null "
        "leaves the parameter out of the search (the spec's value is used).")
    pruner: str = Field("median", description="Stop hopeless trials on the per-epoch validation metric: median "
                        "(below the median of earlier trials at the same epoch), hyperband, or none.")
    startup_trials: int = Field(2, ge=0, description="Trials that finish unpruned before the pruner judges others.")
    warmup_epochs: int = Field(1, ge=0, description="Epochs a trial runs before it can be pruned (at least 1).")
    heartbeat_seconds: int = Field(60, ge=1, description="A running trial signals the database this often; one "
                                   "silent for twice as long (its process killed) is marked failed and its "
                                   "parameters are tried again.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout_seconds(cls, value: str | float | None) -> float | None:
        try:
            return duration_seconds(value, "search.timeout")
        except SpecError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _known_pruner(self) -> "SearchSpec":
        if self.pruner not in ("median", "hyperband", "none"):
            raise ValueError(f"search.pruner '{self.pruner}': use one of median, hyperband, none")
        return self


@dataclass(frozen=True)
class TaskRules:
    """What a task allows and defaults to, where a plain field default cannot say it: the first entry of
    each tuple is the default. Learning rates by method, LEARNING_RATES['*'] for any other method.
    METHOD_MODELS: which kind of model the task's methods adapt, i.e. where tunelab.train.methods finds them
    ('transformers' or 'image')."""

    methods: tuple[str, ...]
    batchings: tuple[str, ...]
    metrics: tuple[str, ...]
    max_length: int
    learning_rates: dict[str, float] = field(default_factory=dict)
    lower_is_better: tuple[str, ...] = ("loss",)
    # by method: ((max width, rate), ...) ascending; the first row whose width bound holds the base model's
    # hidden size wins (tunelab.auto.defaults picks it once the base model is known; docs/defaults.md)
    learning_rate_by_width: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    method_models: str = "transformers"

    def learning_rate(self, method: str) -> float:
        return self.learning_rates.get(method, self.learning_rates.get("*", 2e-5))

    def learning_rate_for(self, method: str, width: int | None) -> tuple[float, str]:
        """(rate, why) for METHOD on a base model WIDTH wide (hidden size; None when unknown)."""
        table = self.learning_rate_by_width.get(method)
        if not table or width is None:
            why = "no width table for this method" if not table else "the base model's width is unknown"
            return self.learning_rate(method), f"the {method} default ({why})"
        lower = 0.0
        for i, (bound, rate) in enumerate(table):
            if width <= bound:
                if i == 0:
                    return rate, f"{method} on a narrow model (hidden size <= {bound:g})"
                if i == len(table) - 1:
                    return rate, f"{method} on a wide model (hidden size > {lower:g})"
                return rate, f"{method} on a medium model ({lower:g} < hidden size <= {bound:g})"
            lower = bound
        return table[-1][1], f"{method} on a wide model (hidden size > {lower:g})"


class RunSpec(Section):
    """The base of every task's spec. A task subclasses it, narrows `task` to its name, swaps in its own
    sections (with their own keys and defaults) and sets RULES; the validator below fills the defaults
    that depend on the method and refuses settings the task does not have."""

    RULES: ClassVar[TaskRules] = TaskRules(("full",), ("random",), ("loss",), 256)
    FAMILY: ClassVar[str] = ""

    name: str | None = Field(None, description="Run name: the run directory is <output.dir>/<name>. Default: spec file stem.")
    task: str = Field(..., description="What the model learns to do (`tunelab init --help` lists the tasks).")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model and adaptation method.")
    data: DataSpec = Field(..., description="Where the examples come from and how to read them.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="How models are scored.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    monitor: MonitorSpec = Field(default_factory=MonitorSpec, description="Thresholds of `tunelab monitor` alerts.")
    energy: EnergySpec = Field(default_factory=EnergySpec, description="Energy and CO2 of the run.")
    search: SearchSpec = Field(default_factory=SearchSpec, description="Hyperparameter search (`tunelab tune`).")

    @model_validator(mode="after")
    def _task_defaults(self) -> "RunSpec":
        """Fill the defaults that depend on the task, and refuse settings that do not fit it."""
        rules = type(self).RULES
        if self.model.method is None:
            self.model.method = rules.methods[0]
        if self.data.max_length is None:
            self.data.max_length = rules.max_length
        if self.training.batching is None:
            self.training.batching = rules.batchings[0]
        if self.evaluation.metric is None:
            self.evaluation.metric = rules.metrics[0]
        for where, value, allowed in (("model.method", self.model.method, rules.methods),
                                      ("training.batching", self.training.batching, rules.batchings),
                                      ("evaluation.metric", self.evaluation.metric, rules.metrics)):
            if value not in allowed:
                raise ValueError(f"{where} '{value}' does not apply to {self.task}; use one of {', '.join(allowed)}")
        return self

    @property
    def family(self) -> str:
        """The task family (classify, causal-lm): which recipe trains it."""
        return type(self).FAMILY

    @property
    def generative(self) -> bool:
        """Whether the task generates text (its model is judged by loss and answers, not labels)."""
        return self.family == "causal-lm"

    @property
    def lower_is_better(self) -> bool:
        """Whether the chosen metric improves downwards (loss) rather than upwards (F1, ROUGE)."""
        return self.evaluation.metric in type(self).RULES.lower_is_better

    @property
    def learning_rate(self) -> float:
        """The effective peak learning rate: the spec's, or the task's default for the method."""
        if self.training.learning_rate:
            return self.training.learning_rate
        return type(self).RULES.learning_rate(self.model.method or "")

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str | None) -> str | None:
        """A run name is one folder inside output.dir: `--overwrite` deletes the run directory, so a name like
        `../../x` must never reach the file system."""
        return None if name is None else check_run_name(name)

    def run_dir(self) -> Path:
        """output.dir/name, confined to output.dir (tunelab.run.disk)."""
        return confined_run_dir(Path(self.output.dir), self.name or "run")
