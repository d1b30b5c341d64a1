"""Training checkpoints: versioned folders plus a pointer file (`LATEST`, `BEST`) replaced atomically.

A kill at any moment leaves the previous checkpoint loadable: a new one is written to a temporary folder
(tunelab.run.files.atomic_dir) and only then named by its pointer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.run.files import atomic_dir, write_text
from tunelab.run.layout import CHECKPOINTS


def trainable_state(model: torch.nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """The parameters being trained (for LoRA: the adapters and the head, a few MB) plus the persistent
    buffers, which training also changes (BatchNorm running statistics). EVERYTHING saves every parameter:
    needed when the trained set changes during the run (gradual unfreezing)."""
    persistent = set(model.state_dict(keep_vars=True))
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if everything or p.requires_grad}
    state.update({n: b.detach().cpu().contiguous() for n, b in model.named_buffers() if n in persistent})
    return state


def save_checkpoint(run_dir: Path, tag: str, model: torch.nn.Module, state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    pointer: str = "LATEST", keep: int = 1, everything: bool = False) -> Path:
    """Write checkpoint TAG atomically, point POINTER at it, and prune older ones of the same kind."""
    root = run_dir / CHECKPOINTS
    final = root / tag
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model, everything), str(tmp / "trainable.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = dict(state, torch_rng=torch.get_rng_state().tolist())
        (tmp / "state.json").write_text(json.dumps(state, default=str), encoding="utf-8")
    write_text(root / pointer, tag + "\n")
    prefix = tag.split("-")[0]
    mine = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix + "-") and not p.name.startswith("."))
    protected = {(root / f).read_text().strip() for f in ("LATEST", "BEST") if (root / f).exists()}
    for old in mine[:-keep] if keep else []:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(run_dir: Path, pointer: str = "LATEST") -> Path | None:
    """The checkpoint POINTER names, or None when there is none yet."""
    ref = run_dir / CHECKPOINTS / pointer
    if not ref.is_file():
        return None
    path = run_dir / CHECKPOINTS / ref.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's trainable weights into MODEL; every saved tensor must find its parameter."""
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    missing = set(saved) - set(model.state_dict(keep_vars=True))
    if missing:
        raise RuntimeError(f"{checkpoint}: weights for unknown parameters {sorted(missing)[:5]}; "
                           "was this checkpoint written by a different spec?")
    model.load_state_dict(saved, strict=False)


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and RNG; return the saved training state."""
    load_weights(model, checkpoint)
    if optimizer is not None and (checkpoint / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    if scheduler is not None and (checkpoint / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    return state
