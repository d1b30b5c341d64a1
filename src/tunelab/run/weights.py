"""The safetensors-only weights guard: one check, used by every step that loads a model folder.

Pickle weights (``pytorch_model.bin``, ``*.pt``, ...) can run arbitrary code when loaded, so tunelab loads
safetensors only: a folder whose weights exist only as pickle files is refused with `UnsafeWeights` (a
`RunError`, so the CLI reports it as a user error) before transformers or torch ever opens it.

    check_safetensors(model_dir)                       # serve: the folder and two levels below; needs safetensors
    check_safetensors(folder, depth=0, require=False)  # image models: that folder only; no weights is not our call

This module imports nothing from tunelab but `tunelab.run.layout`, so any package may use it.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.run.errors import RunError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeWeights(RunError):
    """A model folder holds its weights only in pickle format (which can run code when loaded)."""


def check_safetensors(folder: Path, depth: int = 2, require: bool = True) -> None:
    """Refuse FOLDER when a directory in it (down to DEPTH levels, checkpoints/ skipped) holds pickle weights
    without a safetensors file beside them, or (REQUIRE) when it holds no safetensors weights at all."""
    folder = Path(folder)
    found_safe = False
    dirs = [(folder, 0)]
    while dirs:
        d, level = dirs.pop()
        files = [p for p in d.iterdir() if p.is_file()]
        safe = any(p.suffix == ".safetensors" for p in files)
        found_safe |= safe
        pickles = sorted(p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not safe:
            raise UnsafeWeights(
                f"{d} holds its weights only as pickle files ({', '.join(pickles)}); loading pickle can run arbitrary "
                "code, so tunelab loads safetensors only. If you trust the file, convert it once with "
                "transformers: `save_pretrained(folder, safe_serialization=True)`.")
        if level < depth:
            dirs += [(p, level + 1) for p in d.iterdir() if p.is_dir() and p.name not in ("checkpoints", ".cache")]
    if require and not found_safe:
        raise UnsafeWeights(f"{folder}: no *.safetensors weights found; tunelab loads safetensors only")
