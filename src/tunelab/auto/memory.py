"""Peak training memory, estimated before any training: weights, gradients, optimizer states and activations.

The parameter terms are counted, not guessed: the planner builds the task's model on the meta device (no
weights read; `Task.empty_model`), applies the method through the method registry (LoRA adapters really are
added), and sums bytes = elements x the dtype's size of every parameter. The activation term comes from the
model's config (layers, hidden size, heads, key/value heads, intermediate size, vocabulary) by the formulas in
docs/plan.md, which count the tensors PyTorch's autograd keeps for the backward pass; they were checked with
`torch.autograd.graph.saved_tensors_hooks` on BERT- and Llama-style models (full and LoRA, two lengths).

The model of a training step's peak: weights + gradients + AdamW's two states per trainable weight (torch
keeps them in the weight's dtype; tunelab trains in the load dtype without autocast, so there is no fp32
master copy) + the activations of the step's forward pass + a backward transient (GPU: the gradient of the LM
logits or of one layer's activations; CPU: a share of the activations that glibc's allocator still holds) + a
fixed framework overhead. docs/plan.md has the formulas and how close they come to measured peaks. Only the standard library is imported
at module level; torch comes with the model the functions are given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 2**30
# what a training process holds beyond its tensors: allocator caches, autograd and thread pools, oneDNN
# scratch (CPU, measured by the probe's method on this project's test machines), the CUDA context and cuBLAS
# workspaces (GPU, as `nvidia-smi` shows them beside torch's own allocations)
FRAMEWORK_OVERHEAD = {"cpu": 32 * 2**20, "cuda": 600 * 2**20}
# On a CPU the backward pass allocates the activations' gradients while glibc's allocator still holds much of the
# freed activation memory: the resident peak exceeds the forward pass's by this share of its activations (fitted
# on 12 measured configurations, BERT- and Llama-style, full and LoRA: 0.2 to 1.0, see docs/plan.md)
CPU_BACKWARD_SHARE = 0.6
# names of the gate projection of a gated MLP (SwiGLU / GeGLU: Llama, Mistral, Qwen, Gemma, Phi-3, T5 v1.1)
GATE_NAMES = ("gate_proj", "gate_up_proj", "w1", "wi_0")


@dataclass(frozen=True)
class Shape:
    """What the activation formulas need from a transformer's config."""

    layers: int
    hidden: int
    heads: int
    kv_dim: int  # key/value width: kv heads x head size (smaller than hidden under grouped-query attention)
    intermediate: int
    vocab: int
    gated: bool  # a gated MLP (SwiGLU): three projections instead of two
    attention_dropout: float

    @classmethod
    def of(cls, model: Any) -> "Shape | None":
        """The shape of MODEL's transformer, or None when its config does not describe one (image CNNs)."""
        config = getattr(model, "config", None)
        text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        needed = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        if text is None or any(getattr(text, k, None) is None for k in needed):
            return None
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        dropout = getattr(text, "attention_probs_dropout_prob", None) or getattr(text, "attention_dropout", 0.0) or 0.0
        gated = any(name.rsplit(".", 1)[-1] in GATE_NAMES for name, _ in model.named_modules())
        return cls(text.num_hidden_layers, text.hidden_size, heads, kv_heads * head_dim, text.intermediate_size,
                   text.vocab_size, gated, float(dropout))


@dataclass(frozen=True)
class Batch:
    """The worst batch a run meets: examples, tokens per example, and (LMs) the share of tokens with a loss."""

    size: int
    length: int
    trained_share: float = 1.0  # causal LMs: tokens whose logits are computed (lm_loss keeps only those)
    generative: bool = False


@dataclass
class Params:
    """Parameter counts and bytes of a model under one method."""

    total: int
    trainable: int
    weight_bytes: int
    trainable_bytes: int
    quantized: int = 0  # frozen linear weights counted at the method's bits (QLoRA)
    gradient_checkpointing: bool = False
    activation_bytes: int = 4  # bytes of one activation element (the compute dtype)
    lora_inputs: int = 0  # per layer: summed input widths of the adapted linear layers (each keeps its own copy)
    lora_dropout: float = 0.0


def count_params(model: Any, base_bits: float | None = None, activation_bytes: int = 4) -> Params:
    """Parameters of MODEL (meta or real) after its method was applied. BASE_BITS: the method quantizes the
    frozen linear weights (QLoRA), all but the output embeddings, which bitsandbytes keeps as they are."""
    import torch

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantized_ids = set()
    if base_bits:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not out_emb and not module.weight.requires_grad:
                quantized_ids.add(id(module.weight))
    total = trainable = weight_bytes = trainable_bytes = quantized = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if id(p) in quantized_ids:
            quantized += n
            weight_bytes += math.ceil(n * base_bits / 8)
        else:
            weight_bytes += n * p.element_size()
        if p.requires_grad:
            trainable += n
            trainable_bytes += n * p.element_size()
    lora_inputs, lora_dropout = _lora_layout(model)
    return Params(total, trainable, weight_bytes, trainable_bytes, quantized,
                  _checkpointing(model), activation_bytes, lora_inputs, lora_dropout)


def _checkpointing(model: Any) -> bool:
    """Whether MODEL recomputes activations in the backward pass (transformers' gradient checkpointing)."""
    import torch

    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()
               if isinstance(m, torch.nn.Module))


def _lora_layout(model: Any) -> tuple[int, float]:
    """(summed input width of the LoRA-adapted linear layers of one transformer layer, their dropout)."""
    import torch

    widths: dict[str, int] = {}
    dropout = 0.0
    for name, module in model.named_modules():
        if ".lora_A." in name and isinstance(module, torch.nn.Linear):  # peft: <layer>.lora_A.<adapter name>
            layer = _layer_index(name)
            widths[layer] = widths.get(layer, 0) + module.in_features
        elif ".lora_dropout." in name and isinstance(module, torch.nn.Dropout):
            dropout = float(module.p)
    layers = [w for k, w in widths.items() if k]
    return (max(layers) if layers else 0), dropout


def _layer_index(name: str) -> str:
    """The first numeric path component of a module name ('model.layers.3.self_attn.q_proj' -> '3')."""
    return next((part for part in name.split(".") if part.isdigit()), "")


def layer_elements(shape: Shape, length: int, device_type: str) -> float:
    """Activation elements one transformer layer keeps per token for the backward pass, full fine-tuning.

    Gated (Llama-style, pre-norm, SwiGLU): 7h + 2kv + 4i — the inputs of the attention and MLP projections,
    RMSNorm inputs and normalised values, rotated q, k, v and the attention output for SDPA, the gate, up, SiLU
    and product tensors of the MLP. Plain (BERT-style, post-norm, GELU): 9h + 2i. On a CPU, attention with
    dropout runs PyTorch's math path, which also keeps the probabilities, their dropout and its mask:
    + 2h + 3 * heads * length (the quadratic term); fused SDPA kernels on a GPU keep no such matrix."""
    h, i = shape.hidden, shape.intermediate
    elements = (7 * h + 2 * shape.kv_dim + 4 * i) if shape.gated else (9 * h + 2 * i)
    if shape.attention_dropout > 0 and device_type == "cpu":
        elements += 2 * h + 3 * shape.heads * length
    return elements


@dataclass
class Memory:
    """The estimated peak of one training step, in bytes, by part; `notes` say what was assumed."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    transient: int
    overhead: int
    per_example: int  # what one more example in the batch adds (activations and transient)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.transient + self.overhead

    def largest_batch(self, budget: int, batch: int) -> int:
        """The largest batch size whose estimate fits BUDGET (0: not even one example)."""
        fixed = self.total - self.per_example * batch
        if self.per_example <= 0:
            return batch if fixed <= budget else 0
        return max(0, int((budget - fixed) // self.per_example))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def activation_bytes(params: Params, shape: Shape, batch: Batch, device_type: str) -> tuple[int, int]:
    """(activations, backward transient) of one step on BATCH, in bytes (see layer_elements and docs/plan.md)."""
    tokens = batch.size * batch.length
    per_layer = layer_elements(shape, batch.length, device_type) * params.activation_bytes
    if params.lora_inputs and params.lora_dropout > 0:  # each adapted layer keeps its dropped-out input and mask
        per_layer += params.lora_inputs * (params.activation_bytes + 1)
    layers = shape.layers * per_layer
    if params.gradient_checkpointing:  # only each layer's input is kept; one layer is recomputed at a time
        layers = shape.layers * shape.hidden * params.activation_bytes + per_layer
    embeddings = shape.hidden * (params.activation_bytes + 1)
    acts = tokens * (layers + embeddings)
    transient = tokens * per_layer  # GPU: the gradients of one layer's activations during backward
    logits_grad = 0.0
    if batch.generative:
        kept = tokens * batch.trained_share  # lm_loss computes logits for trained tokens only
        upcast = 4 if params.activation_bytes != 4 else 0  # logits.float()
        acts += kept * shape.vocab * (params.activation_bytes + upcast + 4)  # logits, fp32 copy, log-softmax
        logits_grad = kept * shape.vocab * 4
    if device_type == "cpu":
        transient = CPU_BACKWARD_SHARE * acts
    return int(acts), int(max(transient, logits_grad))


def estimate(params: Params, shape: Shape | None, batch: Batch, device_type: str,
             traced_per_example: int | None = None) -> Memory:
    """The peak memory of a training step for PARAMS on BATCH on DEVICE_TYPE (cpu, cuda).

    SHAPE None (a model without a transformer config): TRACED_PER_EXAMPLE, activation bytes per example
    measured from one real forward pass (tunelab.auto.plan traces small image models), stands in for the formula."""
    notes = []
    if shape is not None:
        acts, transient = activation_bytes(params, shape, batch, device_type)
        per_example = (acts + transient) // batch.size  # both grow with the batch's tokens
    elif traced_per_example is not None:
        acts, transient = traced_per_example * batch.size, traced_per_example
        per_example = traced_per_example
        notes.append("activations traced from one forward pass of the real model (no transformer config)")
    else:
        acts = transient = per_example = 0
        notes.append("activations not estimated: the model's config does not describe a transformer")
    if params.gradient_checkpointing:
        notes.append("gradient checkpointing (set by the method): only each layer's input is kept")
    if params.quantized:
        notes.append(f"{params.quantized:,} frozen linear weights counted at the method's bits per weight")
    return Memory(params.weight_bytes, params.trainable_bytes, 2 * params.trainable_bytes, acts, transient,
                  FRAMEWORK_OVERHEAD.get(device_type, 0), per_example, notes)


def parse_size(text: str) -> int:
    """Bytes in a size such as '24GB', '24GiB', '512MB' or '80G'. GB and GiB both mean 2**30 bytes (as GPU memory
    is reported); a bare number is GB."""
    units = {"t": 2**40, "g": GIB, "m": 2**20, "k": 2**10, "b": 1}
    cleaned = text.strip().lower().replace("ib", "").rstrip("b") or "0"
    unit = cleaned[-1] if cleaned[-1] in units else "g"
    number = cleaned[:-1] if cleaned[-1] in units else cleaned
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"memory size {text!r}: write a number and a unit, such as 24GB or 512MB") from None
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return int(value * units[unit])


def gib(n: float) -> str:
    """Bytes as GiB (or MiB below one GiB), for tables."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"
