"""The small functions of the public Python API that are not simply re-exported (see tunelab/__init__.py).

Light at import: the heavy modules (torch, transformers) load when `predict` is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunelab.run import RunDir, RunError


def load_run(path: str | os.PathLike[str]) -> RunDir:
    """The finished (or interrupted) run directory at PATH; RunError when PATH holds no spec.yaml."""
    run = RunDir(path)
    if not run.has_spec():
        raise RunError(f"{run.path}: not a run directory (no {RunDir.SPEC})")
    return run


def predict(run: str | os.PathLike[str], texts: list[str] | None = None, images: list[str] | None = None,
            top_k: int = 3) -> list[dict[str, Any]]:
    """Label and top_k scores per input from a classifier run: texts, image paths, or text+image pairs
    (one text per image). RUN is a RunDir or its path. One dict per input, as `tunelab predict` prints."""
    from tunelab.evaluate.predict import predict_inputs

    return predict_inputs(Path(run), texts, images, top_k)
