"""The run directory: its layout (RunDir), crash-safe writes, and the safetensors-only weights guard.

Every lifecycle step after training (evaluate, export, serve, monitor, generate) reads a run through
this package, never through the training recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.run.layout import RunDir, RunError


def load_run_spec(run_dir: str | Path) -> Any:
    """The resolved spec a run was trained with."""
    return RunDir(run_dir).load_spec()


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a run ({'status': 'unknown'} when absent)."""
    return RunDir(run_dir).status()


__all__ = ["RunDir", "RunError", "load_run_spec", "run_status"]
