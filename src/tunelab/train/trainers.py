"""The trainers a method names (`Method.trainer` in tunelab.train.methods): how a model is trained once its
method has set it up. LOOP is tunelab's loop (train/loop.py); SETFIT is the setfit library (tunelab.fewshot).

Kept apart from the method registry on purpose: the tasks import the registry, and the trainers import the run
directory (checkpoints) and through it the task registry, so the registry names its trainer and this module runs it.
The classify recipe calls `train(method, model, job)` and never names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.spec.schema import RunSpec
from tunelab.train.hooks import RunHooks
from tunelab.train.loop import TrainState, fit
from tunelab.train.methods import LOOP, SETFIT, Method


@dataclass
class TrainJob:
    """What the recipe hands a trainer: the task, the base model's folder, the training split as read (ROWS:
    texts or images with labels) and as the task encoded it (ENCODED), the spec, the run directory, the
    processes (ACCELERATOR), how to score the validation split (EVALUATE: model -> metrics), whether to
    resume from the run's last checkpoint, and the class weights the recipe chose (SetFit's logistic head)."""

    task: Any
    base: str
    rows: Any
    encoded: Any
    spec: RunSpec
    run_dir: Path
    accelerator: Any
    evaluate: Callable[[torch.nn.Module], dict[str, Any]]
    resume: bool = False
    class_weights: list[float] | None = None  # per label id (tunelab.auto.defaults); the loop's loss has them already
    hooks: RunHooks = field(default_factory=RunHooks)  # a search's per-epoch callback (the loop calls it)


def loop_trainer(model: torch.nn.Module, job: TrainJob) -> tuple[torch.nn.Module, TrainState]:
    """tunelab's training loop on the encoded split: per-epoch validation, early stopping, checkpoints, the
    best epoch's weights left in MODEL."""
    state = fit(model, job.task, job.encoded, job.spec, job.run_dir, job.accelerator, evaluate=job.evaluate,
                resume=job.resume, hooks=job.hooks)
    return job.accelerator.unwrap_model(model), state


def setfit_trainer(model: torch.nn.Module, job: TrainJob) -> tuple[torch.nn.Module, TrainState]:
    """SetFit builds its model from the base folder (MODEL, the task's loaded base, is not used)."""
    from tunelab.fewshot.setfit import train_setfit

    return train_setfit(job)


TRAINERS: dict[str, Callable[[torch.nn.Module, TrainJob], tuple[torch.nn.Module, TrainState]]] = {
    LOOP: loop_trainer, SETFIT: setfit_trainer}


def train(method: Method, model: torch.nn.Module, job: TrainJob) -> tuple[torch.nn.Module, TrainState]:
    """Train MODEL the way METHOD says: (the model to validate and save, its TrainState)."""
    return TRAINERS[method.trainer](model, job)
