"""The optimizer and its parameter groups, with the one weight-decay rule every task uses.

Weight decay pulls weights towards zero. On matrices (attention, MLP, convolution kernels) that is the
regularisation AdamW intends; on biases and normalisation scales (vectors: LayerNorm/BatchNorm weights,
DoRA magnitudes) it only fights the normalisation and shifts activations, so they get none — the usual
BERT recipe, and what HF Trainer does. One rule, `decays`, so a text, image and text+image run treat the
same kind of parameter the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """Whether PARAM (named NAME) gets weight decay: matrices yes; biases, norm weights and other vectors no."""
    return param.ndim >= 2 and "norm" not in name.lower()


def split_decay(model: torch.nn.Module, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                name: str) -> list[dict[str, Any]]:
    """PARAMS (of MODEL) as up to two named groups at learning rate LR: with and without weight decay."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = list(params)
    decay = [p for p in params if decays(names.get(id(p), ""), p)]
    no_decay = [p for p in params if not decays(names.get(id(p), ""), p)]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"})
    return groups


def decay_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Every trainable parameter at the optimizer's learning rate, split by the weight-decay rule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW over GROUPS: the fused kernel where the device has it (what HF Trainer uses by default too)."""
    try:  # the fused kernel: CPU and CUDA since torch 2.4
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device without the fused kernel: the plain loop
        return torch.optim.AdamW(groups, lr=lr)
