"""The run directory's layout: one place that names every file and folder a run leaves behind.

The run directory is the contract between lifecycle steps (train -> evaluate -> export -> serve ->
monitor), so its names are spelled here once; every other module asks a `RunDir` for a path instead of
joining string literals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.run.errors import RunError
from tunelab.run.files import read_json

CHECKPOINTS = "checkpoints"
__all__ = ["CHECKPOINTS", "RunDir", "RunError"]


class RunDir:
    """A run directory and the names inside it.

    Layout::

        spec.yaml          the resolved spec (defaults filled in)      run.json      status, timings, processes
        model/             plain Hugging Face folder (or the task's own)  adapter/   peft adapter (LoRA runs)
        metrics.json       headline metrics, base vs fine-tuned         evaluation.json   full metrics, comparison
        history.json       per-epoch rows and step losses               generations.json  recorded answers (LMs)
        report.html  data_report.html/.json  model_card.md              checkpoints/  LATEST/BEST pointers
        evaluations/       later re-scorings                            export/       merged/, onnx/
        monitoring/        `tunelab monitor` reports, reference statistics (the request log itself,
                           requests.db, lies beside the run directories: one log for every served run)
    """

    SPEC = "spec.yaml"
    STATUS = "run.json"
    METRICS = "metrics.json"
    EVALUATION = "evaluation.json"
    HISTORY = "history.json"
    GENERATIONS = "generations.json"
    REPORT = "report.html"
    DATA_REPORT = "data_report.html"
    DATA_REPORT_JSON = "data_report.json"
    MODEL_CARD = "model_card.md"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        """PATH/NAME for one of the class's file names (RunDir.METRICS, ...)."""
        return self.path / name

    # -- folders --------------------------------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def exports(self) -> Path:
        return self.path / "export"

    @property
    def evaluations(self) -> Path:
        return self.path / "evaluations"

    @property
    def monitoring(self) -> Path:
        """`tunelab monitor` reports (one folder per report) and the cached reference statistics."""
        return self.path / "monitoring"

    # -- reading ----------------------------------------------------------------------------------------
    def find_model(self) -> Path:
        """The folder holding the run's fine-tuned model (model/, or the run folder itself when a bare
        model folder is given); RunError when the run has not produced one."""
        if (self.model / "config.json").is_file():
            return self.model
        if (self.path / "config.json").is_file():
            return self.path
        raise RunError(f"{self.path}: no model found (expected {self.path}/model/config.json); has the run finished?")

    def has_spec(self) -> bool:
        return self.file(self.SPEC).is_file()

    def load_spec(self) -> Any:
        """The resolved spec the run was trained with."""
        from tunelab.spec import load_spec

        path = self.file(self.SPEC)
        if not path.is_file():
            raise RunError(f"{self.path}: not a run directory (no spec.yaml)")
        return load_spec(path)

    def status(self) -> dict[str, Any]:
        """run.json: status (running / completed), start and end times, processes; 'unknown' when absent."""
        path = self.file(self.STATUS)
        return read_json(path) if path.is_file() else {"status": "unknown"}

    def read(self, name: str) -> Any:
        """A JSON file of the run (RunDir.METRICS, ...); RunError when it is missing."""
        path = self.file(name)
        if not path.is_file():
            raise RunError(f"{self.path}: no {name}; has the run finished?")
        return read_json(path)
