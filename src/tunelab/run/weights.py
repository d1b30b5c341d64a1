"""Safetensors only: the guard every step runs before it loads a model folder, and the one-off conversion.

Pickle weights (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ...) can run arbitrary code when loaded, so tunelab
loads safetensors only. A folder whose weights exist only as pickle files is refused with `UnsafeWeights` (a
`RunError`, so the CLI reports it in one line and exits 2) before transformers, peft, sentence-transformers or
torch opens it; the message names the file and the command that converts it:

    check_safetensors(model_dir)                       # a run's model: the folder and two levels below
    check_safetensors(folder, depth=0, require=False)  # image models: that folder only; no weights is not our call
    check_adapter(adapter_dir)                         # a peft adapter: adapter_model.safetensors
    use_safetensors = base_weights(base, trust_pickle) # a base model about to be trained from or scored

`convert_weights(folder)` (`tunelab convert-weights FOLDER`) writes a safetensors twin beside every pickle weights
file of a folder (or into a clean copy). It reads them with torch's restricted unpickler (``weights_only=True``),
which rebuilds tensors and refuses anything else, so converting a hostile file fails instead of running it.

`--trust-pickle` (`model.trust_pickle` in the spec) is the one escape, for base models only: transformers may then
read the pickle files itself (still with ``weights_only``), after a warning that names them.

This module imports nothing from tunelab but `tunelab.run.errors` and `tunelab.run.files`, so any package may use
it; torch and safetensors are imported only by the conversion.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tunelab.run.errors import RunError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# pickle files that hold training state, not weights: never loaded as a model, never converted
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
SKIPPED_DIRS = ("checkpoints", ".cache")

logger = logging.getLogger("tunelab.weights")


class UnsafeWeights(RunError):
    """A model folder holds its weights only in pickle format (which can run code when loaded)."""


def convert_command(folder: Path) -> str:
    """The command that makes FOLDER loadable (quoted for a POSIX shell when it needs it)."""
    import shlex

    return f"tunelab convert-weights {shlex.quote(str(folder))}"


def _refusal(pickles: list[Path], convert: Path, base_hint: bool) -> UnsafeWeights:
    """The refusal of PICKLES (files of one folder), with the command that converts CONVERT (the model folder the
    user named; the conversion reaches its subfolders) and, for a base model (BASE_HINT), the --trust-pickle escape."""
    escape = (" Or, for a base model you vetted yourself, train from it as it is: `tunelab train SPEC "
              "--trust-pickle`.") if base_hint else ""
    others = f" (also {', '.join(p.name for p in pickles[1:])})" if len(pickles) > 1 else ""
    return UnsafeWeights(
        f"{pickles[0]}: pickle weights{others} with no *.safetensors beside them; loading pickle can run arbitrary "
        "code, so tunelab loads safetensors only. If you trust the folder, convert it once: "
        f"`{convert_command(convert)}` (reads tensors only, writes safetensors beside them).{escape}")


def _pickles(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def _has_safetensors(d: Path) -> bool:
    return any(p.is_file() and p.suffix == ".safetensors" for p in d.iterdir())


def check_safetensors(folder: Path, depth: int = 2, require: bool = True, base_hint: bool = False) -> None:
    """Refuse FOLDER when a directory in it (down to DEPTH levels, checkpoints/ skipped) holds pickle weights
    without a safetensors file beside them, or (REQUIRE) when it holds no safetensors weights at all.
    BASE_HINT: the refusal also mentions --trust-pickle (for base models, the only place it applies)."""
    folder = Path(folder)
    found_safe = False
    dirs = [(folder, 0)]
    while dirs:
        d, level = dirs.pop()
        safe = _has_safetensors(d)
        found_safe |= safe
        pickles = [d / name for name in _pickles(d) if name not in NOT_WEIGHTS]
        if pickles and not safe:
            raise _refusal(pickles, folder, base_hint)
        if level < depth:
            dirs += [(p, level + 1) for p in d.iterdir() if p.is_dir() and p.name not in SKIPPED_DIRS]
    if require and not found_safe:
        raise UnsafeWeights(f"{folder}: no *.safetensors weights found; tunelab loads safetensors only "
                            f"(if the weights are pickle files you trust: `{convert_command(folder)}`)")


def check_adapter(folder: Path) -> None:
    """A peft adapter folder must hold adapter_model.safetensors: without it peft falls back to adapter_model.bin,
    which is pickle."""
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = [folder / name for name in _pickles(folder) if name not in NOT_WEIGHTS]
        if pickles:
            raise _refusal(pickles, folder, base_hint=False)
        raise UnsafeWeights(f"{folder}: no {ADAPTER_WEIGHTS}; tunelab loads adapters from safetensors only")


def model_folders(folder: Path) -> list[Path]:
    """The folders a base model's loaders read weights from: FOLDER itself and, for a sentence-transformers
    model, each module folder its modules.json names (a Dense layer keeps its own weights there)."""
    folder = Path(folder)
    folders = [folder]
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UnsafeWeights(f"{modules}: not valid JSON ({e}); cannot tell which folders hold weights") from None
        folders += [folder / str(e["path"]) for e in entries
                    if isinstance(e, dict) and e.get("path") and (folder / str(e["path"])).is_dir()]
    return folders


def pickle_only_files(folder: Path) -> list[Path]:
    """The pickle weights files a loader of FOLDER (see model_folders) would read: those without safetensors
    beside them. Empty for a hub id or a folder that holds safetensors."""
    if not Path(folder).is_dir():
        return []
    return [d / name for d in model_folders(Path(folder)) if not _has_safetensors(d)
            for name in _pickles(d) if name not in NOT_WEIGHTS]


_warned: set[str] = set()  # base folders whose trusted pickle files were named already (once per process)


def base_weights(name_or_folder: str | Path, trust_pickle: bool = False, training: bool = True) -> bool | None:
    """Guard a base model before it is loaded; returns the `use_safetensors` to pass to from_pretrained.

    Without TRUST_PICKLE: a local folder whose weights are pickle only is refused (UnsafeWeights; TRAINING: the
    message also offers --trust-pickle), and the loader is told True, so transformers itself refuses pickle (for
    a hub id too). With it: the pickle files are named in a warning (once per folder), and the loader gets None
    (safetensors when present, else pickle, which transformers reads with torch's `weights_only` loader)."""
    folder = Path(name_or_folder)
    trusted = pickle_only_files(folder)
    if not trust_pickle:
        if trusted:
            raise _refusal([p for p in trusted if p.parent == trusted[0].parent], folder, base_hint=training)
        return True
    if trusted and str(folder) not in _warned:
        _warned.add(str(folder))
        logger.warning("--trust-pickle: loading pickle weights %s; pickle can run code, so do this only for "
                       "files you converted or vetted yourself (`%s` makes a safetensors copy)",
                       ", ".join(str(p) for p in trusted), convert_command(folder))
    return None


# ---------------------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------------------
def safetensors_name(pickle_name: str) -> str:
    """The name transformers, peft and sentence-transformers look for in place of PICKLE_NAME:
    pytorch_model.bin -> model.safetensors, pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors,
    adapter_model.bin -> adapter_model.safetensors, anything else NAME.pt -> NAME.safetensors."""
    stem = pickle_name.rsplit(".", 1)[0]
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model"):]
    return stem + ".safetensors"


def _state_dict(path: Path) -> dict[str, Any]:
    """PATH's tensors, read with torch's restricted unpickler (plain tensors and containers only)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as e:
        raise UnsafeWeights(f"{path}: not converted: torch's weights-only loader could not read it as plain tensors "
                            f"({str(e).splitlines()[0][:300]}); tunelab will not unpickle anything else") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict with more than name -> tensor entries"
        raise UnsafeWeights(f"{path}: not converted: it holds {kind}, not a state dict of named tensors (a "
                            "training checkpoint? save the model's state_dict() from code you trust instead)")
    return state


def _save(state: dict[str, Any], dest: Path) -> None:
    """Write STATE as safetensors at DEST (atomically). Tensors that share memory (tied embeddings) are copied:
    safetensors stores each tensor on its own."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        shared = key in seen and tensor.numel() > 0
        seen.add(key)
        tensors[name] = tensor.clone().contiguous() if shared else tensor.contiguous()
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "pt"})  # transformers checks the format tag
    os.replace(tmp, dest)


def _convert_index(index: Path, dest_dir: Path) -> None:
    """pytorch_model.bin.index.json (sharded weights) -> model.safetensors.index.json, shard names mapped."""
    data = json.loads(index.read_text(encoding="utf-8"))
    data["weight_map"] = {k: safetensors_name(v) for k, v in data.get("weight_map", {}).items()}
    dest = dest_dir / (safetensors_name(index.name.removesuffix(".index.json")) + ".index.json")
    dest.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def weight_pickles(folder: Path, depth: int = 2) -> list[Path]:
    """The pickle weights files in FOLDER down to DEPTH levels (checkpoints/ and training-state files skipped)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES and path.name not in NOT_WEIGHTS
                and len(rel.parts) <= depth + 1 and not any(part in SKIPPED_DIRS for part in rel.parts[:-1])):
            found.append(path)
    return found


def convert_weights(folder: Path, out: Path | None = None, depth: int = 2) -> list[tuple[Path, Path]]:
    """Write a safetensors twin for every pickle weights file in FOLDER (see weight_pickles). In place when OUT
    is None: beside each pickle file, which stays (every loader prefers the safetensors), skipping those that
    have their twin already. Else into OUT: a copy of FOLDER without its pickle files. Every file is read (and
    so checked) before anything is written; one that is not a plain state dict stops it (UnsafeWeights).
    Returns the (pickle file, safetensors file) pairs written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder")
    if out is not None and (Path(out).resolve() == folder.resolve() or folder.resolve() in Path(out).resolve().parents):
        raise RunError(f"--out {out} is inside {folder}; give a folder outside it (or no --out to convert in place)")
    pickles = weight_pickles(folder, depth)
    if out is None:
        pickles = [p for p in pickles if not (p.parent / safetensors_name(p.name)).exists()]
    if not pickles:
        raise RunError(f"{folder}: no pickle weights without a safetensors twin to convert "
                       f"({', '.join(PICKLE_SUFFIXES)}; training state such as optimizer.pt is left alone)")
    states = {p: _state_dict(p) for p in pickles}
    if out is None:
        return _write_twins(folder, folder, states)
    from tunelab.run.files import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=lambda d, names: [
            n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES or n.endswith(".bin.index.json")])
        written = _write_twins(folder, tmp, states)
    return [(src, out / dest.relative_to(tmp)) for src, dest in written]


def _write_twins(src: Path, dest_root: Path, states: dict[Path, dict[str, Any]]) -> list[tuple[Path, Path]]:
    """Write each state as safetensors under DEST_ROOT (the same relative place), and the shard indexes."""
    written = []
    for pickle_file, state in states.items():
        rel = pickle_file.relative_to(src)
        dest = dest_root / rel.parent / safetensors_name(rel.name)
        _save(state, dest)
        written.append((pickle_file, dest))
    for index in sorted(src.rglob("*.bin.index.json")):
        _convert_index(index, dest_root / index.parent.relative_to(src))
    return written
