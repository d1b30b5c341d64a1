"""In-context (k-shot) prompts: held-out prompts with k training examples shown before them.

The generative ladder of `tunelab auto` asks, before it spends compute on training, how far the base
model gets when it merely sees a few solved examples. The prompts built here are that rung's input:
the same held-out prompts the other rungs answer, each preceded by the same k examples drawn from the
training split (drawn once, with the run's seed, so every prompt sees the same shots and a rerun the
same prompts). A prompt that would not fit the task's max_length drops shots, oldest first, rather
than being cut mid-example; each prompt records how many shots it kept.

Chat shots are whole training conversations placed as earlier turns of the conversation (the held-out
conversation's system message stays first); completion shots are whole training documents, each
ended by EOS as in training, before the held-out document's opening.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DEFAULT_SHOTS = 3  # k: enough to show the answer format, few enough to fit a small model's context


def draw_shots(n: int, k: int, seed: int) -> list[int]:
    """Indices of K training examples out of N (all of them when N <= K), the same for a given SEED."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return sorted(random.Random(seed).sample(range(n), min(k, n)))


def with_shots(shots: Sequence[Sequence[Mapping[str, Any]]], context: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The held-out conversation CONTEXT with each shot conversation's turns placed before its own turns.

    A leading system message of CONTEXT stays first (it frames the whole conversation); the shots' own
    system messages are dropped, since a conversation has one system prompt."""
    system = [dict(context[0])] if context and context[0].get("role") == "system" else []
    shown = [dict(m) for shot in shots for m in shot if m.get("role") != "system"]
    return system + shown + [dict(m) for m in context[len(system):]]


def joined_ids(shots: Sequence[Sequence[int]], prompt_ids: Sequence[int]) -> list[int]:
    """Completion: the shot documents' token ids (each already ended by EOS) followed by the prompt's."""
    return [t for shot in shots for t in shot] + list(prompt_ids)


def fitted(build: Callable[[Sequence[Any]], list[int]], shots: Sequence[Any], limit: int) -> tuple[list[int], int]:
    """(token ids, shots kept): BUILD(shots) with as many of SHOTS as fit in LIMIT tokens, dropping the first
    ones first; with none fitting, the prompt alone, cut from the left as the task cuts its own prompts."""
    for start in range(len(shots) + 1):
        ids = build(shots[start:])
        if len(ids) <= limit:
            return ids, len(shots) - start
    return build([])[-limit:], 0
