"""Spec sections that more than one task uses: labelled text, images, chat data, LM training and evaluation.

Each task builds its spec from these and the shared sections of tunelab.spec.schema (see the task
modules); a key lives in the section of the tasks that read it, so a foreign key (an image key in a chat
spec) is an unknown-key error naming the closest key that task has.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.spec.schema import DataSpec, EvaluationSpec, ModelSpec, Section, TrainingSpec


class LabelledTextData(DataSpec):
    """Texts with labels (text classification)."""

    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label (a name or an integer id).")
    labels: list[str] | None = Field(
        None, description="Label names in id order. Inferred (sorted) from training data when absent."
    )
    multi_label: bool = Field(False, description="Each example may carry several labels.")
    label_separator: str = Field(
        "|", description="Separator of several labels in one text cell (multi-label CSV/TSV); JSON may use lists."
    )


class ImageData(DataSpec):
    """Images with labels: a folder per class, a table of paths, an .npz, or a bundled set."""

    image_column: str = Field("image", description="Column holding the image path (relative to the table).")
    label_column: str = Field("label", description="Column holding the label (a name or an integer id).")
    labels: list[str] | None = Field(
        None, description="Label names in id order. Inferred (sorted) from training data when absent."
    )
    image_size: int | None = Field(
        None, ge=8, description="Train and predict at this square size. Default: the model's own (224)."
    )
    augment: Literal["default", "no-flip", "none"] = Field(
        "default", description="Training augmentation (random resized crop, flip, colour jitter); "
        "no-flip for digits, text and other images a mirror changes; none to switch it off."
    )


class TextImageData(ImageData):
    """A text and an image per example, with a label."""

    text_column: str = Field("text", description="Column holding the text.")


class ChatData(DataSpec):
    """Conversations: OpenAI messages, Alpaca or ShareGPT rows."""

    format: Literal["auto", "messages", "alpaca", "sharegpt"] = Field(
        "auto", description="Chat data layout: OpenAI messages, Alpaca instruction/input/output, ShareGPT conversations."
    )
    train_on: Literal["all-assistant", "last-assistant", "all"] = Field(
        "all-assistant", description="Chat tokens that carry the loss: every assistant turn, the last one, or everything."
    )
    chat_template: str | None = Field(
        None, description="Chat template: null uses the base model's own; 'chatml' or a Jinja string when it has none."
    )


class CompletionData(DataSpec):
    """Plain documents: .txt, or a column of a table."""

    text_column: str = Field("text", description="Column holding the text (tables; .txt files are read whole).")


class ClassifierTraining(TrainingSpec):
    batching: str | None = Field(
        None, description="length-mixed: similar lengths in a batch, labels mixed; random: plain shuffled batches."
    )
    class_weights: Literal["auto", "balanced", "none"] = Field(
        "auto", description="Weight the training loss by class: auto = n / (k * count) per class when the data "
        "doctor reports class imbalance (positives' weight per label for multi-label), balanced = always, "
        "none = never. Recorded in evaluation.json and the report."
    )


class LMTraining(TrainingSpec):
    batching: str | None = Field(
        None, description="padding-free: examples concatenated, no attention across them; packing: rows filled to "
        "max_length; padded: one example a row."
    )


class ClassifierEvaluation(EvaluationSpec):
    metric: str | None = Field(
        None, description="Metric for early stopping, best-checkpoint choice and the baseline comparison."
    )


class TextClassifierEvaluation(ClassifierEvaluation):
    zero_shot_template: str = Field(
        "{label}", description="How a label name is phrased for the zero-shot baseline of a sentence encoder."
    )


class GenerationSpec(Section):
    prompts: int = Field(16, ge=0, description="Held-out prompts answered by the base and the fine-tuned model (0: none).")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer, in tokens (greedy decoding).")
    every_epoch: bool = Field(
        False, description="Also generate on validation prompts each epoch (needed when metric is a generation metric)."
    )


class LMEvaluation(EvaluationSpec):
    metric: str | None = Field(
        None, description="Metric for early stopping, best-checkpoint choice and the comparison with the base: "
        "validation loss, or a generation metric (needs generation.every_epoch)."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Generation on held-out prompts.")


class TextImageModel(ModelSpec):
    image_base: str = Field("efficientnet-lite0", description="The image backbone (model.base is the text encoder).")
    freeze_encoders: bool = Field(
        False, description="Keep both pre-trained encoders frozen and train the fusion head only."
    )


class ImageModel(ModelSpec):
    """An image model: model.base is the image backbone."""

    @property
    def image_base(self) -> str:
        """The image backbone, named as in a text-image spec (here it is model.base itself)."""
        return self.base
