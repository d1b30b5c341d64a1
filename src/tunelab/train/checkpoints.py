"""Training checkpoints: versioned folders plus a pointer file (`LATEST`, `BEST`) replaced atomically.

A kill at any moment leaves the previous checkpoint loadable: a new one is written to a temporary folder
(tunelab.run.files.atomic_dir) under a name no other checkpoint has, and only then named by its pointer; a
pointer never names a folder that is being replaced.

What a `LATEST` checkpoint holds (everything that decides the rest of the run, so `--resume` ends exactly
where the uninterrupted run would have ended):
    trainable.safetensors   the parameters being trained and the persistent buffers (BatchNorm statistics)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW's moments and step counts) ...
    optimizer.json          ... and its parameter groups (learning rate, betas, weight decay)
    scheduler.json          the learning-rate scheduler's position
    rng.safetensors/.json   Python, NumPy, torch CPU and CUDA generator states (tunelab.train.rng)
    state.json              TrainState: epoch, batch within it, optimizer step, early-stopping state, history,
                            and the current epoch's losses and training-metric inputs so far
No pickle anywhere: a checkpoint can be loaded without trusting whoever wrote it. `BEST` checkpoints hold
the weights only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.run.errors import RunError
from tunelab.run.files import atomic_dir, write_text
from tunelab.run.layout import CHECKPOINTS
from tunelab.train import faults, rng

PICKLED = ("optimizer.pt", "scheduler.pt")  # the pickle files of checkpoints written before tunelab 0.2


def trainable_state(model: torch.nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """The parameters being trained (for LoRA: the adapters and the head, a few MB) plus the persistent
    buffers, which training also changes (BatchNorm running statistics). EVERYTHING saves every parameter:
    needed when the trained set changes during the run (gradual unfreezing)."""
    persistent = set(model.state_dict(keep_vars=True))
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if everything or p.requires_grad}
    state.update({n: b.detach().cpu().contiguous() for n, b in model.named_buffers() if n in persistent})
    return state


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors (safetensors) and plain values (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         data: dict[str, Any]) -> None:
    """Load what `optimizer_to_files` wrote. JSON turns tuples (AdamW's betas) into lists: the live groups'
    types are kept so the optimizer computes with exactly the values it had."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in data["plain"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for live, saved in zip(optimizer.param_groups, data["param_groups"]):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run_dir: Path, tag: str, model: torch.nn.Module, state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    pointer: str = "LATEST", keep: int = 1, everything: bool = False) -> Path:
    """Write checkpoint TAG atomically, point POINTER at it, and prune older ones of the same kind.

    A tag that exists already (an epoch re-run after a resume) gets a new suffix rather than replacing the
    folder: replacing takes two renames, and a kill between them would leave the pointer naming nothing."""
    root = run_dir / CHECKPOINTS
    final, n = root / tag, 1
    while final.exists():
        final, n = root / f"{tag}-r{n}", n + 1
    weights = trainable_state(model, everything)
    opt_tensors, opt_data = optimizer_to_files(optimizer) if optimizer is not None else ({}, {})
    needed = sum(t.numel() * t.element_size() for t in [*weights.values(), *opt_tensors.values()])
    with atomic_dir(final, needed=needed) as tmp:  # a full disk: a DiskError naming the folder and `needed`
        save_file(weights, str(tmp / "trainable.safetensors"))
        faults.point("checkpoint-weights")
        if optimizer is not None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(opt_data), encoding="utf-8")
        if scheduler is not None:
            (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()), encoding="utf-8")
        rng_tensors, rng_data = rng.capture()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(rng_data), encoding="utf-8")
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        faults.point("checkpoint-written")
    write_text(root / pointer, final.name + "\n")
    faults.point("checkpoint-pointed")
    prefix = tag.split("-")[0]
    mine = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix + "-") and not p.name.startswith("."))
    protected = {(root / f).read_text().strip() for f in ("LATEST", "BEST") if (root / f).exists()}
    for old in mine[:-keep] if keep else []:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial(run_dir: Path) -> list[str]:
    """Delete the temporary folders of checkpoint writes that a kill interrupted; return their names."""
    root = run_dir / CHECKPOINTS
    partial = [p for p in root.glob(".*.tmp-*") if p.is_dir()] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in partial)


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


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore weights, optimizer and scheduler (and, with RESTORE_RNG, every generator: tunelab.train.rng);
    return the saved training state. A checkpoint holding pickle files is refused: loading pickle can run code."""
    pickled = [name for name in PICKLED if (checkpoint / name).exists()]
    if pickled:
        raise RunError(f"{checkpoint} holds pickle files ({', '.join(pickled)}) from an older tunelab; they are not "
                       "loaded (pickle can run code). Start the run again without --resume")
    load_weights(model, checkpoint)
    if optimizer is not None and (checkpoint / "optimizer.safetensors").is_file():
        optimizer_from_files(optimizer, load_file(str(checkpoint / "optimizer.safetensors")),
                             json.loads((checkpoint / "optimizer.json").read_text(encoding="utf-8")))
    if scheduler is not None and (checkpoint / "scheduler.json").is_file():
        scheduler.load_state_dict(json.loads((checkpoint / "scheduler.json").read_text(encoding="utf-8")))
    if restore_rng:
        restore_rng_of(checkpoint)
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))


def restore_rng_of(checkpoint: Path) -> None:
    """Put every random generator back where it was when CHECKPOINT was written."""
    rng.restore(load_file(str(checkpoint / "rng.safetensors")),
                json.loads((checkpoint / "rng.json").read_text(encoding="utf-8")))
