"""The text+image classifier: a text encoder and an image backbone feeding a small fusion head.

Used by the text-image-classification task (tunelab.tasks.text_image_classification); kept here, beside
the other image models, so that the task module itself stays light to import.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


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

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.pixels.set_epoch(epoch, first_batch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pixels([{k: f[k] for k in ("image", "labels") if k in f} for f in features])
        text = self.tokenizer([f["text"] for f in features], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")
        batch.update(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        return batch
