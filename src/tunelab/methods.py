"""Adaptation methods: how much of the base model is trained. One registry entry per method.

`apply(model, spec, task)` returns the model to train; `finalize(model)` returns a plain transformers
model for the `model/` folder (LoRA adapters merged) plus the adapter model to keep beside it, if any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunelab.spec import RunSpec

METHODS: dict[str, Callable[[torch.nn.Module, RunSpec, Any], torch.nn.Module]] = {}


def register_method(name: str) -> Callable:
    """Register an apply function under NAME (the spec's model.method)."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = fn
        return fn

    return wrap


@register_method("full")
def apply_full(model: torch.nn.Module, spec: RunSpec, task: Any) -> torch.nn.Module:
    """Every weight is trained."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@register_method("lora")
def apply_lora(model: torch.nn.Module, spec: RunSpec, task: Any) -> torch.nn.Module:
    """Low-rank adapters on the target modules (peft); the task head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = spec.model.lora
    config = LoraConfig(task_type=task.peft_task_type(), r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules)
    return get_peft_model(model, config)


def apply(model: torch.nn.Module, spec: RunSpec, task: Any) -> torch.nn.Module:
    if spec.model.method not in METHODS:
        raise KeyError(f"unknown method '{spec.model.method}'; available: {', '.join(METHODS)}")
    return METHODS[spec.model.method](model, spec, task)


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model: LoRA weights folded into a copy of the base, or the model itself."""
    if not is_peft(model):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()


def trainable_summary(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": trainable}
