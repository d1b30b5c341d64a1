"""Adaptation methods for transformers models: how much of the base model is trained. One registry entry
per method (full, lora, dora, qlora).

`apply(model, spec, peft_task_type)` returns the model to train; `merged(model)` a plain transformers model
for the `model/` folder (LoRA adapters folded in). Image models have their own strategies (linear probe,
gradual unfreezing, discriminative learning rates, LoRA on attention) in tunelab.vision.strategies, a
registry of the same kind that also sets parameter groups and per-epoch changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunelab.spec.schema import RunSpec

METHODS: dict[str, Callable[[torch.nn.Module, RunSpec, str], torch.nn.Module]] = {}


def register_method(name: str) -> Callable:
    """Register an apply function under NAME (the spec's model.method)."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = fn
        return fn

    return wrap


@register_method("full")
def apply_full(model: torch.nn.Module, spec: RunSpec, peft_task_type: str) -> torch.nn.Module:
    """Every weight is trained."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@register_method("lora")
def apply_lora(model: torch.nn.Module, spec: RunSpec, peft_task_type: str, use_dora: bool = False) -> torch.nn.Module:
    """Low-rank adapters on the target modules (peft); a classifier's head stays fully trainable.
    'all-linear' means every linear layer except the output projection (peft's rule)."""
    from peft import LoraConfig, get_peft_model

    cfg = spec.model.lora
    config = LoraConfig(task_type=peft_task_type, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, use_dora=use_dora)
    return get_peft_model(model, config)


@register_method("dora")
def apply_dora(model: torch.nn.Module, spec: RunSpec, peft_task_type: str) -> torch.nn.Module:
    """DoRA: LoRA on the direction of each weight plus a trained magnitude vector (peft `use_dora`).
    Closer to full fine-tuning than LoRA at the same rank, for about 1.3x LoRA's step time."""
    return apply_lora(model, spec, peft_task_type, use_dora=True)


@register_method("qlora")
def apply_qlora(model: torch.nn.Module, spec: RunSpec, peft_task_type: str) -> torch.nn.Module:
    """LoRA on a base loaded in 4-bit NF4 (the task loads it so); peft prepares the frozen 4-bit layers
    (fp32 norms, input gradients for checkpointing). CUDA only: `check_supported` refuses it elsewhere."""
    from peft import prepare_model_for_kbit_training

    return apply_lora(prepare_model_for_kbit_training(model), spec, peft_task_type)


class MethodUnavailable(RuntimeError):
    """A method this machine cannot run; raised before any work starts."""


def check_supported(method: str) -> None:
    """Refuse, up front, a method that cannot run here (QLoRA needs CUDA and bitsandbytes)."""
    if method != "qlora":
        return
    if not torch.cuda.is_available():
        raise MethodUnavailable("model.method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels), and none is "
                                "available here. Use method: lora (same adapters on the unquantised base; needs "
                                "more memory) or run on a machine with an NVIDIA GPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MethodUnavailable("model.method qlora needs bitsandbytes: pip install bitsandbytes") from None


def apply(model: torch.nn.Module, spec: RunSpec, peft_task_type: str) -> torch.nn.Module:
    """The model to train under spec.model.method; PEFT_TASK_TYPE is peft's name for the model's head
    (SEQ_CLS, CAUSAL_LM), which decides what an adapter keeps trainable beside the LoRA weights."""
    if spec.model.method not in METHODS:
        raise KeyError(f"unknown method '{spec.model.method}'; available: {', '.join(METHODS)}")
    return METHODS[spec.model.method](model, spec, peft_task_type)


def is_peft(model: torch.nn.Module) -> bool:
    """Whether MODEL is a peft model (holds adapters)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


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
