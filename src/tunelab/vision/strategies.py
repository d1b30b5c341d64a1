"""Fine-tuning strategies for image classifiers: what trains, and at what learning rate.

A strategy works on the `layer_groups()` of an `ImageClassifier` (stem -> head):

- `linear-probe`: only the head trains; the backbone is frozen (and kept in inference mode by
  `ImageClassifier.train`).
- `full`: everything trains at one learning rate.
- `gradual-unfreeze`: epoch 0 trains the head only; each later epoch unfreezes one more group from the top
  (`on_epoch_start(model, epoch)`). The optimiser gets every parameter from the start (frozen ones have no
  gradient, so the optimiser skips them), so unfreezing only flips `requires_grad`.
- `discriminative`: everything trains; a group `d` steps below the head gets `lr * decay**d` (head at lr).
- `lora`: peft LoRA adapters on the attention query/value projections (ViT-like models) or on every Linear
  layer outside the head (other models); the head trains fully (peft `modules_to_save`). Refused for models
  with no Linear layer to adapt (a pure CNN such as EfficientNet or ResNet).

Use: `model = apply_strategy(model, name)`, then `optimizer = AdamW(param_groups(model, name, lr, wd))`, and
call `on_epoch_start(model, name, epoch)` at the start of every epoch (a no-op except for gradual unfreezing).
Weight decay follows tunelab.train.optim.decays: never on biases and norm weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tunelab.vision.models import ImageClassifier

DEFAULT_DECAY = 0.5
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


class StrategyError(ValueError):
    """A strategy that cannot apply to this model (e.g. LoRA on a pure CNN)."""


def _classifier(model: nn.Module) -> ImageClassifier:
    """The ImageClassifier itself, or the one inside a peft model (same modules, not a copy)."""
    if isinstance(model, ImageClassifier):
        return model
    base = getattr(model, "get_base_model", None)
    if base is not None and isinstance(base(), ImageClassifier):
        return base()
    raise TypeError(f"expected an ImageClassifier (or a peft model around one), got {type(model).__name__}")


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _set_trainable(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _refresh_modes(model: nn.Module) -> None:
    """Re-apply train mode so newly frozen/unfrozen parts switch between inference and training mode."""
    if model.training:
        model.train()


def _split_decay(model: nn.Module, params: list[nn.Parameter], lr: float, weight_decay: float,
                 name: str) -> list[dict[str, Any]]:
    from tunelab.train.optim import split_decay  # the one weight-decay rule (train/optim.py says why)

    return split_decay(model, params, lr, weight_decay, name)


def _group_names(n: int) -> list[str]:
    return [f"group{i}" for i in range(n - 1)] + ["head"]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    apply_fn: Callable[[nn.Module, dict[str, Any]], nn.Module]
    groups_fn: Callable[[nn.Module, float, float, float], list[dict[str, Any]]]
    epoch_fn: Callable[[nn.Module, int], None] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    def apply(self, model: nn.Module, **options: Any) -> nn.Module:
        return self.apply_fn(model, {**self.defaults, **options})

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float = 0.0,
                     decay: float = DEFAULT_DECAY) -> list[dict[str, Any]]:
        return self.groups_fn(model, lr, weight_decay, decay)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if self.epoch_fn is not None:
            self.epoch_fn(model, epoch)


# -- linear probe ---------------------------------------------------------------------------------------
def _apply_linear_probe(model: nn.Module, _: dict[str, Any]) -> nn.Module:
    clf = _classifier(model)
    _set_trainable(list(clf.parameters()), False)
    _set_trainable(clf.head_parameters(), True)
    _refresh_modes(model)
    return model


def _groups_head_only(model: nn.Module, lr: float, wd: float, decay: float) -> list[dict[str, Any]]:
    return _split_decay(model, _classifier(model).head_parameters(), lr, wd, "head")


# -- full ---------------------------------------------------------------------------------------------------
def _apply_full(model: nn.Module, _: dict[str, Any]) -> nn.Module:
    _set_trainable(list(_classifier(model).parameters()), True)
    _refresh_modes(model)
    return model


def _groups_all(model: nn.Module, lr: float, wd: float, decay: float) -> list[dict[str, Any]]:
    params = [p for g in _classifier(model).layer_groups() for p in g]
    return _split_decay(model, params, lr, wd, "all")


# -- gradual unfreezing -----------------------------------------------------------------------------------
def unfrozen_groups(epoch: int, n_groups: int) -> int:
    """How many groups, counted from the head down, train in EPOCH (0-based): 1, 2, ... up to all."""
    return max(1, min(n_groups, epoch + 1))


def _gradual_epoch(model: nn.Module, epoch: int) -> None:
    """Set requires_grad for EPOCH from scratch (so resuming at any epoch gives the same state)."""
    groups = _classifier(model).layer_groups()
    k = unfrozen_groups(epoch, len(groups))
    for i, g in enumerate(groups):
        _set_trainable(g, i >= len(groups) - k)
    _refresh_modes(model)


def _apply_gradual(model: nn.Module, _: dict[str, Any]) -> nn.Module:
    _gradual_epoch(model, 0)
    return model


# -- discriminative learning rates ---------------------------------------------------------------------------
def discriminative_lrs(n_groups: int, lr: float, decay: float = DEFAULT_DECAY) -> list[float]:
    """Learning rate per group, stem -> head: lr * decay**(depth from the top); the head gets lr."""
    return [lr * decay ** (n_groups - 1 - i) for i in range(n_groups)]


def _groups_discriminative(model: nn.Module, lr: float, wd: float, decay: float) -> list[dict[str, Any]]:
    groups = _classifier(model).layer_groups()
    out: list[dict[str, Any]] = []
    for params, group_lr, name in zip(groups, discriminative_lrs(len(groups), lr, decay), _group_names(len(groups))):
        out += _split_decay(model, params, group_lr, wd, name)
    return out


# -- LoRA -------------------------------------------------------------------------------------------------------
def lora_targets(model: ImageClassifier) -> list[str]:
    """The Linear modules LoRA adapts: attention query/value projections where the model has them (ViT names
    them `query`/`value`, or `q_proj`/`v_proj` in transformers 5), otherwise every Linear outside the head.
    Full module names relative to MODEL."""
    head_ids = {id(m) for h in model._head_modules() for m in h.modules()}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in head_ids]
    for q, v in (("query", "value"), ("q_proj", "v_proj")):
        attn = [n for n, _ in linears if n.rsplit(".", 1)[-1] in (q, v)]
        if attn:
            return attn
    return [n for n, _ in linears]


def _head_names(model: ImageClassifier) -> list[str]:
    ids = {id(m) for m in model._head_modules()}
    return [n for n, m in model.named_modules() if id(m) in ids]


def _apply_lora(model: nn.Module, options: dict[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if is_peft(model):
        raise StrategyError("this model already has LoRA adapters")
    clf = _classifier(model)
    targets = lora_targets(clf)
    if not targets:
        raise StrategyError(
            f"LoRA needs Linear layers to adapt and {clf.config.get('architecture', type(clf).__name__)} has none "
            "outside its head (a convolutional network). Use strategy linear-probe, gradual-unfreeze, "
            "discriminative or full instead.")
    config = LoraConfig(r=int(options["r"]), lora_alpha=int(options["alpha"]), lora_dropout=float(options["dropout"]),
                        target_modules=targets, modules_to_save=_head_names(clf))
    peft_model = get_peft_model(clf, config)
    _refresh_modes(peft_model)
    return peft_model


def _groups_trainable(model: nn.Module, lr: float, wd: float, decay: float) -> list[dict[str, Any]]:
    if not is_peft(model):
        raise StrategyError("strategy lora: call apply_strategy(model, 'lora') before param_groups")
    params = [p for p in model.parameters() if p.requires_grad]
    return _split_decay(model, params, lr, wd, "lora")


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (
        Strategy("linear-probe", "train the head only; the pre-trained backbone is frozen",
                 _apply_linear_probe, _groups_head_only),
        Strategy("full", "train every weight at one learning rate", _apply_full, _groups_all),
        Strategy("gradual-unfreeze", "head first, then one more layer group per epoch from the top",
                 _apply_gradual, _groups_all, _gradual_epoch),
        Strategy("discriminative", "train every weight; lower layers at geometrically smaller learning rates",
                 _apply_full, _groups_discriminative),
        Strategy("lora", "low-rank adapters on attention/linear layers plus a fully trained head",
                 _apply_lora, _groups_trainable, defaults=dict(DEFAULT_LORA)),
    )
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}") from None


def apply_strategy(model: nn.Module, strategy: str, **options: Any) -> nn.Module:
    """Set what trains for STRATEGY; returns the model to train (a peft model for lora, else MODEL itself).
    lora options: r, alpha, dropout."""
    return get_strategy(strategy).apply(model, **options)


def param_groups(model: nn.Module, strategy: str, lr: float, weight_decay: float = 0.0,
                 decay: float = DEFAULT_DECAY) -> list[dict[str, Any]]:
    """Optimiser parameter groups for STRATEGY (call after apply_strategy). Each dict has params, lr,
    weight_decay and a name; torch optimisers keep the extra key."""
    return get_strategy(strategy).param_groups(model, lr, weight_decay, decay)


def on_epoch_start(model: nn.Module, strategy: str, epoch: int) -> None:
    """Call at the start of each epoch (0-based); only gradual-unfreeze does anything."""
    get_strategy(strategy).on_epoch_start(model, epoch)


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> ImageClassifier:
    """The plain ImageClassifier with LoRA merged into the weights (in place; the peft wrapper is spent)."""
    if not is_peft(model):
        return _classifier(model)
    merged = model.merge_and_unload()
    assert isinstance(merged, ImageClassifier)
    return merged


__all__ = ["STRATEGIES", "Strategy", "StrategyError", "apply_strategy", "discriminative_lrs", "get_strategy",
           "is_peft", "lora_targets", "merge_lora", "on_epoch_start", "param_groups", "trainable_count",
           "unfrozen_groups"]
