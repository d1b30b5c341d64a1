"""Adaptation methods: how much of the base model is trained, at which learning rates, and what changes
between epochs. One registry, one entry per method, for two kinds of model:

- `transformers` models (text encoders, LLMs), adapted through peft: full, lora, dora, qlora;
- `image` models (tunelab's image classifiers): full, linear-probe, gradual-unfreeze, discriminative and
  lora on attention, whose implementation lives beside the image models (tunelab.vision.strategies) and
  is registered here when first asked for.

A method also says how it trains (`Method.trainer`, run by tunelab.train.trainers): most use tunelab's loop
(train/loop.py) on the model `apply` returned; setfit (few-shot text classification, tunelab.fewshot) trains
with the setfit library and hands back the model it built. The classify recipe asks `for_spec(spec)` and
never names a method.

`get_method(name, models)` gives the Method; `apply(model, spec, peft_task_type)` is the transformers
shortcut; `merged(model)` a plain transformers model for the `model/` folder (LoRA adapters folded in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.spec.schema import RunSpec

TRANSFORMERS, IMAGE = "transformers", "image"


LOOP, SETFIT = "loop", "setfit"  # the trainers a method may name (tunelab.train.trainers runs them)


@dataclass(frozen=True)
class Method:
    """One way to adapt a model. APPLY returns the model to train (MODEL itself or a peft wrapper);
    PARAM_GROUPS, when set, replaces the default groups (every trainable weight, one rate; train/optim.py);
    ON_EPOCH_START, when set, changes what trains as epochs pass (gradual unfreezing). TRAINER names how it
    trains (tunelab.train.trainers runs it): LOOP, tunelab's loop on the model APPLY returned, or SETFIT, the
    setfit library on the base model's folder. CHECK_BASE, when set, refuses (spec, base folder) pairs the
    method cannot train, before the data is read."""

    name: str
    models: str
    apply: Callable[[torch.nn.Module, RunSpec, str], torch.nn.Module]
    param_groups: Callable[[torch.nn.Module, float, float], list[dict[str, Any]]] | None = None
    on_epoch_start: Callable[[torch.nn.Module, int], None] | None = None
    description: str = ""
    trainer: str = LOOP
    check_base: Callable[[RunSpec, str], None] | None = None
    base_bits: float | None = None  # bits per frozen base weight when the method quantizes them (the planner's)

    def check(self, spec: RunSpec, base: str) -> None:
        """Refuse, before any data work, a base model (local folder or hub id) this method cannot train."""
        if self.check_base is not None:
            self.check_base(spec, base)

    def groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from tunelab.train.optim import decay_groups

        if self.param_groups is None:
            return decay_groups(model, lr, weight_decay)
        return self.param_groups(model, lr, weight_decay)

    def epoch_start(self, model: torch.nn.Module, epoch: int) -> None:
        if self.on_epoch_start is not None:
            self.on_epoch_start(model, epoch)


METHODS: dict[tuple[str, str], Method] = {}


def register(method: Method) -> Method:
    """Add METHOD to the registry under (its kind of model, its name: the spec's model.method)."""
    METHODS[(method.models, method.name)] = method
    return method


def register_method(name: str, models: str = TRANSFORMERS, base_bits: float | None = None) -> Callable:
    """Register an apply function under NAME (the spec's model.method) for MODELS; its docstring describes it.
    BASE_BITS: bits per frozen linear weight when the method quantizes the base (what `tunelab plan` counts)."""

    def wrap(fn: Callable) -> Callable:
        register(Method(name, models, fn, description=(fn.__doc__ or "").strip().split("\n")[0], base_bits=base_bits))
        return fn

    return wrap


def _register_image_methods() -> None:
    """The image strategies, as methods: their apply, parameter groups and per-epoch changes."""
    from tunelab.vision.strategies import STRATEGIES

    for strategy in STRATEGIES.values():
        register(Method(strategy.name, IMAGE, lambda model, spec, _, s=strategy: s.apply(model),
                        lambda model, lr, wd, s=strategy: s.param_groups(model, lr, wd),
                        strategy.on_epoch_start if strategy.epoch_fn is not None else None, strategy.description))


def for_spec(spec: RunSpec) -> Method:
    """The Method a spec asks for: model.method among the methods of the task's kind of model (its RULES)."""
    return get_method(spec.model.method or "", type(spec).RULES.method_models)


def get_method(name: str, models: str = TRANSFORMERS) -> Method:
    """The method NAME for MODELS; the error lists the methods there are."""
    if models == IMAGE and (IMAGE, name) not in METHODS:
        _register_image_methods()
    if (models, name) not in METHODS:
        names = [n for (kind, n) in METHODS if kind == models]
        raise KeyError(f"unknown method '{name}' for {models} models; available: {', '.join(names)}")
    return METHODS[(models, name)]


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


# NF4 with double quantization: 4 bits a weight, plus an fp8 scale per block of 64 weights and an fp32 scale per
# 256 blocks of those (QLoRA paper, section 3: 8/64 + 32/(64*256) = 0.127 bits a weight)
NF4_DOUBLE_QUANT_BITS = 4 + 8 / 64 + 32 / (64 * 256)


@register_method("qlora", base_bits=NF4_DOUBLE_QUANT_BITS)
def apply_qlora(model: torch.nn.Module, spec: RunSpec, peft_task_type: str) -> torch.nn.Module:
    """LoRA on a base loaded in 4-bit NF4 (the task loads it so); peft prepares the frozen 4-bit layers
    (fp32 norms, input gradients for checkpointing). CUDA only: `check_supported` refuses it elsewhere."""
    from peft import prepare_model_for_kbit_training

    return apply_lora(prepare_model_for_kbit_training(model), spec, peft_task_type)


def _setfit_check(spec: RunSpec, base: str) -> None:
    from tunelab.fewshot.bases import check_base

    check_base(spec, base)


register(Method("setfit", TRANSFORMERS, lambda model, spec, _: model, trainer=SETFIT, check_base=_setfit_check,
                description="SetFit: contrastive fine-tuning of a sentence encoder on pairs of the few labelled "
                "examples, then a classification head (the setfit library; tunelab.fewshot)."))


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
    """The transformers model to train under spec.model.method; PEFT_TASK_TYPE is peft's name for the
    model's head (SEQ_CLS, CAUSAL_LM), which decides what an adapter keeps trainable beside the LoRA weights."""
    return get_method(spec.model.method or "", TRANSFORMERS).apply(model, spec, peft_task_type)


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


def base_bits(name: str) -> float | None:
    """Bits per frozen base weight of the method NAME when it quantizes them (QLoRA), else None: what the planner
    counts instead of the weight's dtype."""
    return next((m.base_bits for (_, n), m in METHODS.items() if n == name and m.base_bits), None)
