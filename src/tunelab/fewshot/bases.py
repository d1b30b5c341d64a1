"""Which base models SetFit can tune, answered before any work (the method registry asks, so this module stays
light: it must not reach the training code, which imports the run directory and through it the task registry)."""

from __future__ import annotations

from tunelab.catalog import is_sentence_encoder
from tunelab.spec.schema import RunSpec, SpecError


def check_base(spec: RunSpec, base: str) -> None:
    """SetFit tunes a sentence encoder: refuse any other base (BASE: the resolved folder or hub id), naming
    what works."""
    if is_sentence_encoder(base):
        return
    raise SpecError(
        f"model.method setfit needs a sentence-transformers encoder (a folder with modules.json), and "
        f"'{spec.model.base}' is not one. Use a sentence encoder such as the bundled 'minilm' "
        "(all-MiniLM-L6-v2), a local sentence-transformers folder (for a hub id: download it first, e.g. "
        "`huggingface-cli download NAME --local-dir DIR`, and give DIR), or method: full / lora for this base.")
