"""Task registry. A task knows how to build a model for its labels, encode examples, turn model outputs
into predictions and metrics, score the untuned baseline, and predict from a saved model folder.
Adding a task is one module, one `@register_task` line, and one row in tests/integration/test_tasks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Register a task class under NAME (the spec's `task:` value)."""

    def wrap(cls: type) -> type:
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str) -> Any:
    """The task class for NAME; the error lists the available tasks."""
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


from tunelab.tasks import (  # noqa: E402,F401  (register themselves)
    causal_lm, image_classification, text_classification, text_image_classification)
