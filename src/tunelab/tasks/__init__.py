"""The task registry: every task the spec's `task:` key can name.

A task implements the protocol in tasks/base.py (from_spec, prepare_data, load_model, empty_model, encode, collator,
training_step, save, from_saved, routes, ...). Adding a task is one module with a `@register_task` class,
one line in the import list below, and one row in tests/integration/test_tasks.py. Task modules import only
light libraries at module level, so this registry (and every task's spec schema) loads without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.tasks.base import (CAUSAL_LM, CLASSIFY, FAMILY_PROTOCOLS, TASKS, ClassifierTask, GeneratorTask, Task,
                                get_task, register_task)

# the one list of tasks, in the order `tunelab init --help` and error messages show them
from tunelab.tasks import text_classification  # noqa: E402,F401  (each registers itself)
from tunelab.tasks import causal_lm  # noqa: E402,F401
from tunelab.tasks import image_classification  # noqa: E402,F401
from tunelab.tasks import text_image_classification  # noqa: E402,F401



def from_model_dir(folder: Path) -> tuple[Task, Any]:
    """(task, model) for a bare fine-tuned classifier folder with no run directory around it: a plain
    transformers sequence-classification folder, as `model/` of a text-classification run is."""
    return text_classification.TextClassification.from_model_dir(folder, max_length=512)


__all__ = ["CAUSAL_LM", "CLASSIFY", "FAMILY_PROTOCOLS", "TASKS", "ClassifierTask", "GeneratorTask", "Task",
           "from_model_dir", "get_task", "register_task"]
