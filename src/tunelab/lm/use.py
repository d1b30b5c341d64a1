"""Use a generative run: answer prompts with the fine-tuned model, rendered exactly as in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.lm import loading
from tunelab.lm.generation import generate_texts
from tunelab.run import RunDir, RunError, load_run_spec
from tunelab.tasks import base, get_task


def load_generator(run: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a chat or completion run: its merged export, its full model, or base + adapter."""
    return loading.load_generator(RunDir(run))


def task_for(run: str | Path, tokenizer: Any) -> Any:
    """The run's task object (chat or completion) holding the saved tokenizer and template."""
    spec = load_run_spec(run)
    task_cls = get_task(spec.task)
    if base.GENERATE not in task_cls.capabilities:
        raise RunError(f"{run}: a {spec.task} run; generate and chat need a chat or completion run")
    task = task_cls.from_spec(spec)
    task.tokenizer = tokenizer
    return task


def generate(run: str | Path, prompts: list[str], max_new_tokens: int = 128, system: str | None = None,
             temperature: float = 0.0) -> list[dict[str, Any]]:
    """Answers for each prompt, rendered with the run's chat template (chat) or as plain text (completion)."""
    model, tokenizer = load_generator(run)
    task = task_for(run, tokenizer)
    ids = [task.prompt_ids(p, system=system) for p in prompts]
    _, texts = generate_texts(model, tokenizer, ids, max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature or 1.0)
    return [{"prompt": p, "answer": t} for p, t in zip(prompts, texts)]
