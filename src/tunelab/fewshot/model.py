"""The model a SetFit run saves: a sentence encoder (its transformer, pooling and normalisation, computed as
sentence-transformers computes an embedding) with a linear classification head, as one transformers model.

Why not setfit's own folder: setfit saves its head with joblib (a pickle) and a run directory holds
safetensors only (tunelab.run.weights); and every later step (evaluate, predict, serve, monitor, ONNX export)
calls a classifier as `model(input_ids=..., attention_mask=...).logits`. A logistic-regression head is a linear
map followed by softmax, so it converts into a torch Linear exactly (tunelab.fewshot.setfit does it).

The folder's config.json says model_type "tunelab-sentence-classifier": plain transformers refuses it with an
"unrecognized model type" error instead of loading the encoder with a random head; `register_auto()` teaches
the Auto classes the type (tunelab.tasks.text_classification calls it before it loads a run).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "tunelab-sentence-classifier"
POOLINGS = ("mean", "cls", "max")  # the sentence-transformers pooling modes this model reproduces


class SentenceClassifierConfig(PreTrainedConfig):
    """ENCODER: the transformer's own config as a dict; POOLING: one of POOLINGS; NORMALIZE: L2-normalise the
    pooled embedding (the encoder had a Normalize module). hidden_size and vocab_size are repeated at the top
    level because serving, monitoring and export read them from `model.config`."""

    model_type = MODEL_TYPE

    def __init__(self, encoder: dict[str, Any] | None = None, pooling: str = "mean", normalize: bool = True,
                 **kwargs: Any) -> None:
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.normalize = normalize
        kwargs.setdefault("hidden_size", self.encoder.get("hidden_size"))
        kwargs.setdefault("vocab_size", self.encoder.get("vocab_size"))
        super().__init__(**kwargs)


class SentenceClassifier(PreTrainedModel):
    """Encoder -> pooling over the attention mask -> (L2 normalisation) -> Linear: logits over the labels.
    `hidden_states` are the encoder's, so embeddings (/v1/embeddings, drift checks) come from the tuned body."""

    config_class = SentenceClassifierConfig
    base_model_prefix = "encoder"

    def __init__(self, config: SentenceClassifierConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(**config.encoder))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              output_hidden_states: bool | None = None) -> tuple[torch.Tensor, Any]:
        """(sentence embeddings, the encoder's outputs)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        tokens = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.config.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.config.pooling == "max":
            pooled = tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (tokens * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
        if self.config.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled, out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, labels: torch.Tensor | None = None,
                **_: Any) -> SequenceClassifierOutput:
        """Logits for a tokenized batch (LABELS are accepted and ignored: the model is trained by setfit)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pooled, out = self.embed(input_ids, attention_mask, output_hidden_states)
        return SequenceClassifierOutput(logits=self.classifier(pooled), hidden_states=out.hidden_states)


def register_auto() -> None:
    """Let AutoConfig / AutoModelForSequenceClassification load a saved SentenceClassifier folder."""
    AutoConfig.register(MODEL_TYPE, SentenceClassifierConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(SentenceClassifierConfig, SentenceClassifier, exist_ok=True)


def from_encoder(encoder: PreTrainedModel, pooling: str, normalize: bool, weight: torch.Tensor, bias: torch.Tensor,
                 labels: list[str]) -> SentenceClassifier:
    """A SentenceClassifier holding ENCODER's weights (copied exactly) and the head WEIGHT [labels x hidden], BIAS."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling '{pooling}' is not supported; one of {', '.join(POOLINGS)}")
    config = SentenceClassifierConfig(encoder=encoder.config.to_dict(), pooling=pooling, normalize=normalize,
                                      id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                                      problem_type="single_label_classification")
    model = SentenceClassifier(config)
    model.encoder.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        model.classifier.weight.copy_(weight.to(model.classifier.weight.dtype))
        model.classifier.bias.copy_(bias.to(model.classifier.bias.dtype))
    return model.eval()
