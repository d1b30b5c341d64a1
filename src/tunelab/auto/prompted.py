"""The untrained rungs of the generative ladder: the base model as it is, and with k examples in its prompts.

Both answer the validation prompts that every trained rung is judged on (task.prompts on the same split,
the same greedy decoding and max_new_tokens as the recipe, tunelab.recipes.causal_lm.answer), so the
ladder's numbers compare. One model load serves both; each rung gets its own folder under rungs/ with
rung.json (metrics, time, energy) and its answers, and the data report of the split it read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.lm.metrics import generation_metrics
from tunelab.recipes.causal_lm import answer
from tunelab.recipes.common import check_data, resolve_base, start_meter
from tunelab.run.files import write_json
from tunelab.spec import RunSpec
from tunelab.tasks import get_task

RUNG_FILE = "rung.json"


@dataclass
class PromptedScore:
    """One untrained rung's validation result."""

    metrics: dict[str, Any]  # exact_match, token_f1, rouge_l, n
    seconds: float
    energy: dict[str, Any] | None
    folder: Path
    shots: float = 0.0  # mean number of training examples shown per prompt


def score_prompted(spec: RunSpec, folders: dict[int, Path], seed: int, force: bool = False) -> dict[int, PromptedScore]:
    """Score the base model on the validation prompts with k examples shown, for each k in FOLDERS
    (k = 0: the base as it is), writing each result into its folder. The first rung's time and energy
    include loading the model and the data."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    first = next(iter(folders.values()))
    first.mkdir(parents=True, exist_ok=True)
    meter, started = start_meter(spec, accelerator), time.perf_counter()
    base = resolve_base(spec)
    task = get_task(spec.task).from_spec(spec)
    task.load_tokenizer(base)
    prepared = task.prepare_data(spec, base, force, tokenizer=task.tokenizer)
    check_data(prepared, force, first, accelerator)
    prompts = task.prompts(prepared.splits["validation"], spec)
    if not prompts:
        raise ValueError("the validation split gave no prompts to answer: the ladder judges generative rungs by "
                         "their answers; set evaluation.generation.prompts above 0 and check the validation data")
    model = task.load_model(base)
    scores: dict[int, PromptedScore] = {}
    for i, (k, folder) in enumerate(folders.items()):
        if i:  # the first rung's meter has run since the start: loading is its cost
            meter, started = start_meter(spec, accelerator), time.perf_counter()
        shown = prompts if k == 0 else task.in_context_prompts(prepared.splits["train"], prompts, k, seed)
        _, texts = answer(model, task, shown, spec, f"validation answers, {k} example(s) shown")
        metrics = generation_metrics(texts, [p["reference"] for p in shown])
        energy, seconds = meter.stop(), time.perf_counter() - started
        shots = sum(p.get("shots", 0) for p in shown) / len(shown)
        scores[k] = PromptedScore(metrics, seconds, energy, folder, shots)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RUNG_FILE, {
            "split": "validation", "examples_shown": k, "mean_examples_kept": shots, "metrics": metrics,
            "seconds": seconds, "energy": energy, "max_new_tokens": spec.evaluation.generation.max_new_tokens,
            "answers": [{"location": p["location"], "reference": p["reference"], "answer": text,
                         "prompt": task.tokenizer.decode(p["prompt_ids"])} for p, text in zip(shown, texts)]})
    return scores
