"""Greedy generation in batches, used for the before/after comparison, the export parity check and
`tunelab generate`.

The same function (same batch size, same left padding, same order) produces the outputs that are
later compared, so a mismatch after export means the weights changed, not the procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the end-of-turn tokens of the common chat templates that this vocabulary has."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in vocab and vocab[t] not in ids]
    return ids


def generate_ids(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                 batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 desc: str = "generating", show: bool = True) -> list[list[int]]:
    """New token ids for each prompt (prompt excluded, stop token excluded), in the prompts' order.

    Prompts are left-padded in batches so each continues from its own last token.
    """
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc, leave=False, disable=not show or len(batches) < 2):
            longest = max(len(p) for p in batch)
            ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, p in enumerate(batch):
                ids[row, longest - len(p):] = torch.tensor(p)
                mask[row, longest - len(p):] = 1
            sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample \
                else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 eos_token_id=stops or None, pad_token_id=pad_id, **sampling)
            for row in out[:, longest:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                outputs.append(row[:cut])
    model.train(was_training)
    return outputs


def generate_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                   **kwargs: Any) -> tuple[list[list[int]], list[str]]:
    """(token ids, decoded text) of the greedy continuation of each prompt."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, **kwargs)
    return ids, [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
