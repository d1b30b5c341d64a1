"""Stratified train / validation / test splits, reproducible from the seed."""

from __future__ import annotations

from typing import Any

import datasets
from sklearn.model_selection import train_test_split


def stratify_key(label: Any) -> str:
    """The value a split stratifies on: the label, or the sorted label set for multi-label rows."""
    return "|".join(sorted(label)) if isinstance(label, list) else str(label)


def _split(indices: list[int], keys: list[str], size: float, seed: int) -> tuple[list[int], list[int]]:
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    # Label sets seen once (common for multi-label) cannot be stratified; fold them into one stratum.
    safe = [k if counts[k] >= 2 else "__rare__" for k in keys]
    rare = safe.count("__rare__")
    strat = safe if rare != 1 and len(set(safe)) > 1 else None
    try:
        return train_test_split(indices, test_size=size, random_state=seed, stratify=strat)
    except ValueError:
        return train_test_split(indices, test_size=size, random_state=seed, stratify=None)


def stratified_split(ds: datasets.Dataset, shares: dict[str, float], seed: int) -> dict[str, datasets.Dataset]:
    """Carve the named held-out splits (e.g. {"validation": 0.1, "test": 0.1}) off DS; the rest is train.

    Each class keeps its share in every split, so a rare class is not left out of validation or test.
    """
    keys = [stratify_key(lab) for lab in ds["label"]]
    rest, remaining = list(range(len(ds))), 1.0
    out: dict[str, datasets.Dataset] = {}
    for name, share in shares.items():
        rest, held = _split(rest, [keys[i] for i in rest], share / remaining, seed)
        remaining -= share
        out[name] = ds.select(sorted(held))
    out["train"] = ds.select(sorted(rest))
    return out


def stratified_sample(ds: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    """A stratified subset of N examples (all of DS when it is no larger)."""
    if n >= len(ds):
        return ds
    keys = [stratify_key(lab) for lab in ds["label"]]
    keep, _ = _split(list(range(len(ds))), keys, len(ds) - n, seed)
    return ds.select(sorted(keep))
