"""Batches for causal language models: padding-free, packed, or padded; and the attention that keeps
concatenated examples apart.

Padding a batch of chat examples to its longest member wastes most of the compute when lengths are
log-normal (a few long conversations, many short ones). Padding-free batching concatenates the
examples of a batch into one row, restarts `position_ids` at each example and passes the boundaries
as `cu_seq_lens_q/k` (the varlen convention of flash-attention, which transformers forwards to the
attention function). Packing does the same with rows filled up to `max_length` tokens, so every step
sees the same number of tokens.

Examples must not attend to each other. On a GPU with `flash-attn` installed, transformers'
`flash_attention_2` reads the boundaries natively. Everywhere else tunelab registers its own attention
implementation, `tunelab_varlen`: one causal `scaled_dot_product_attention` call per example, so the
cost stays the sum of squared lengths instead of the square of the sum (a block-diagonal mask over the
whole row would compute every cross-example score and then throw it away). Padded batches and
generation fall through to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

VARLEN_ATTENTION = "tunelab_varlen"
IGNORE = -100


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each example of a flattened row (batch 1, boundaries in cu_seq_lens_q);
    anything else (padded batches, generation with a cache) goes to transformers' SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: repeat the key/value heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    sizes = getattr(bounds, "_tunelab_sizes", None)
    if sizes is None:  # once per batch, not once per layer: on a GPU .tolist() waits for the device
        sizes = (bounds[1:] - bounds[:-1]).tolist()
        bounds._tunelab_sizes = sizes
    p = dropout if module.training else 0.0
    # split (not slicing) so the backward pass writes each example's gradient without a full-row fill per example
    parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scaling, is_causal=True)
             for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2)) if q.shape[2]]
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for unpadded input (the attention keeps examples apart itself); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    mask = kwargs.get("attention_mask")
    if mask is None or bool(mask.all()):
        return None
    return sdpa_mask(*args, **kwargs)


def register_varlen_attention() -> str:
    """Register `tunelab_varlen` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _varlen_mask)
    return VARLEN_ATTENTION


def training_attention() -> str:
    """flash_attention_2 where it is installed and usable (CUDA), otherwise tunelab_varlen."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass  # deliberate: flash-attn not installed; the SDPA-per-example path below works on every device
    return register_varlen_attention()


# -- collators ----------------------------------------------------------------------------------
def flatten(features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row: input_ids, labels, position_ids restarting per example,
    and cu_seq_lens_q/k + max_length_q/k marking the boundaries (flash-attention's varlen form)."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    bounds = [0]
    for f in features:
        n = len(f["input_ids"])
        ids += f["input_ids"]
        labels += [IGNORE] + list(f["labels"][1:])  # never predict an example's first token from the one before
        positions += range(n)
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}


def pad(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch (the fallback that works with any attention)."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class LMCollator:
    """Collate features (or packed bins of features) for the chosen batching mode."""

    def __init__(self, mode: str, pad_id: int) -> None:
        if mode not in ("padding-free", "packing", "padded"):
            raise ValueError(f"unknown batching '{mode}' for a language model; use padding-free, packing or padded")
        self.mode, self.pad_id = mode, pad_id

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if self.mode == "packing":  # each item is a bin: a list of examples
            items = [f for bin_ in items for f in bin_]
        return pad(items, self.pad_id) if self.mode == "padded" else flatten(items)


def pack(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """First-fit-decreasing bins of example indices whose lengths sum to at most CAPACITY each.

    Longest first keeps the bins full (within a few percent of optimal in practice); ties broken by a
    seeded shuffle so the same data give the same bins.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        size = min(lengths[i], capacity)
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(i)
                room[b] -= size
                break
        else:
            bins.append([i])
            room.append(capacity - size)
    return bins


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose NEXT token is trained (the only logits the loss needs).

    For a flattened row (batch 1) these are exact; for padded rows they are the union over the batch.
    Boundaries between concatenated examples never count: `flatten` sets each example's first label
    to IGNORE, as a separate row would never predict its first token either."""
    nxt = labels[:, 1:] != IGNORE
    return nxt.any(dim=0).nonzero().squeeze(-1)


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over trained tokens, computing logits only where they are needed.

    The vocabulary projection is the largest single matmul of a small LLM; skipping it on prompt and
    padding tokens (via transformers' `logits_to_keep`) saves a share of time and memory equal to the
    share of untrained tokens. Returns (loss, number of trained tokens).
    """
    labels = batch["labels"]
    keep = trained_positions(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if keep.numel() == 0:  # nothing to learn in this batch (all cut by truncation): a zero that keeps graphs equal
        out = model(**inputs, logits_to_keep=1)
        return out.logits.sum() * 0.0, 0
    out = model(**inputs, logits_to_keep=keep)
    targets = labels[:, keep + 1]
    logits = out.logits.float()
    n = int((targets != IGNORE).sum())
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum") / max(n, 1)
    return loss, n


class BinBatchSampler(Sampler[list[int]]):
    """Random batches of item indices, reshuffled each epoch (seeded), for LM datasets."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.n))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return iter([order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size
