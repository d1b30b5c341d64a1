"""What every recipe shares: the start of a run, the data check, and the final packaging.

A recipe (one per task family) reads top to bottom: start -> prepare -> baseline -> adapt -> validate ->
package. The steps that are the same for every family live here, written once.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from tunelab import __version__, catalog
from tunelab.auto.energy import EnergyMeter
from tunelab.data import DataError, Prepared
from tunelab.reports import data_report
from tunelab.run import RunDir, RunError
from tunelab.run.disk import check_output_dir
from tunelab.run.files import write_json, write_text
from tunelab.spec import RunSpec, dump_spec
from tunelab.train.checkpoints import checkpoint_path
from tunelab.train.interrupt import Interrupted
from tunelab.train.loop import TrainState

@dataclass
class Run:
    """What fine_tune returns: the run directory, headline metrics, the training state, the test comparison
    and the promotion gate's verdict (tunelab.evaluate.gate; `gate["promoted"]`)."""

    dir: Path
    metrics: dict[str, Any]
    state: TrainState
    comparison: dict[str, Any]
    gate: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.gate.get("promoted", True))


def _open_run_dir(spec: RunSpec, resume: bool, overwrite: bool, accelerator: Accelerator) -> tuple[Path, bool]:
    """Create the run directory, or check that resuming into it is safe. Returns (run directory, whether
    training continues from a checkpoint): `--resume` on a run killed before its first checkpoint starts it
    from the beginning in the same directory, and says so."""
    run_dir = spec.run_dir()  # confined to output.dir (tunelab.run.disk)
    check_output_dir(run_dir.parent)  # a file or a read-only folder: say so now, not after the baseline
    stored = RunDir(run_dir).file(RunDir.SPEC)
    if resume:
        if stored.is_file() and stored.read_text() != dump_spec(spec):
            raise RunError(f"{run_dir}: the spec changed since this run started; resume with the same spec "
                           "or start a new run (--name)")
        if checkpoint_path(run_dir) is not None:
            return run_dir, True
        accelerator.print(f"{run_dir}: no checkpoint yet; starting from the beginning in the same directory")
        overwrite = True
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            hint = (" or --resume to continue it" if checkpoint_path(run_dir) else
                    " or --resume to start it again in place (it stopped before its first checkpoint)")
            raise RunError(f"{run_dir} already exists; pass --overwrite to replace it{hint}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(stored, dump_spec(spec))
    accelerator.wait_for_everyone()
    return run_dir, False


def check_data(prepared: Prepared, force: bool, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
    """Write the data report; stop on errors unless forced (and then say so in the report)."""
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    report = data_report.build(prepared.findings, sizes, prepared.files, forced=force and bool(prepared.errors))
    if accelerator.is_main_process:
        data_report.write(report, run_dir)
        accelerator.print(f"data: {data_report.headline(report)}")
    if prepared.errors and not force:
        details = "\n".join(f.render() for f in prepared.errors)
        raise DataError(f"the data has {len(prepared.errors)} error(s); fix them or pass --force "
                        f"(report: {RunDir(run_dir).file(RunDir.DATA_REPORT)}):\n{details}")
    return report


def start_run(spec: RunSpec, resume: bool, overwrite: bool, started: float) -> tuple[Accelerator, Path, bool]:
    """The start every recipe shares: processes checked, seed set, run directory opened, run.json 'running'.
    Returns (accelerator, run directory, whether training continues from a checkpoint)."""
    accelerator = Accelerator(gradient_accumulation_steps=spec.training.gradient_accumulation_steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes != world:
        # torchrun started several processes, but each thinks it is alone: they would all write the run.
        raise RunError(f"{world} processes were launched but accelerate sees {accelerator.num_processes}; "
                       "on a machine without GPUs set ACCELERATE_USE_CPU=1 (see README, 'More than one machine')")
    set_seed(spec.training.seed)
    run_dir, resume = _open_run_dir(spec, resume, overwrite, accelerator)
    if accelerator.is_main_process:
        write_json(RunDir(run_dir).file(RunDir.STATUS), {"status": "running", "started": started, "tunelab": __version__,
                                          "processes": accelerator.num_processes, **_trust_record(spec)})
    return accelerator, run_dir, resume


def start_meter(spec: RunSpec, accelerator: Accelerator) -> EnergyMeter:
    """The run's energy meter, started (spec.energy). Only the main process measures: the power counters see the
    whole machine, and one process writes run.json; every other process gets a meter that records nothing."""
    on = spec.energy.track and accelerator.is_main_process
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return EnergyMeter(spec.energy.grid_intensity, enabled=on, gpus=_run_gpus(accelerator, local) if on else (),
                       processes=accelerator.num_processes, local_processes=local).start()


def _run_gpus(accelerator: Accelerator, local: int) -> list[str]:
    """UUIDs of the GPUs the run uses on this machine: each local process's cuda:LOCAL_RANK (NVML reads them)."""
    if accelerator.device.type != "cuda":
        return []
    import torch

    indices = [accelerator.device.index or 0] if local == 1 else range(min(local, torch.cuda.device_count()))
    # a torch without `uuid` gives a name NVML does not list: the record then says the GPU was not counted
    return [str(getattr(torch.cuda.get_device_properties(i), "uuid", f"cuda:{i}")) for i in indices]


def resolve_base(spec: RunSpec) -> str:
    """plan: the base model as a local folder (bundled name, folder or hub id), checked to be loadable, and to
    hold safetensors weights unless model.trust_pickle (tunelab.run.weights; refused before any work, or warned)."""
    from tunelab.run.weights import base_weights

    base = catalog.resolve(spec.model.base)
    catalog.check_loadable(base)
    base_weights(base, spec.model.trust_pickle)
    return base


def _trust_record(spec: RunSpec) -> dict[str, Any]:
    """run.json's record of model.trust_pickle: the flag and the pickle files it let the base be read from."""
    if not spec.model.trust_pickle:
        return {}
    from tunelab.run.weights import pickle_only_files

    files = pickle_only_files(Path(catalog.resolve(spec.model.base)))
    return {"trust_pickle": True, "trusted_pickle_files": [str(p) for p in files]}


def _carried_trust(run_dir: Path) -> dict[str, Any]:
    """The trust record start_run wrote, carried into the final run.json."""
    status = RunDir(run_dir).status()
    return {key: status[key] for key in ("trust_pickle", "trusted_pickle_files") if key in status}


def package(run_dir: Path, metrics: dict[str, Any], details: dict[str, Any], state: TrainState) -> None:
    """The files every run ends with: metrics.json, evaluation.json and history.json (run.json 'completed'
    comes last, from mark_completed, so a run that says completed has everything)."""
    run = RunDir(run_dir)
    write_json(run.file(RunDir.METRICS), metrics)
    write_json(run.file(RunDir.EVALUATION), details)
    write_json(run.file(RunDir.HISTORY), {"epochs": state.history, "steps": state.step_losses})


@contextmanager
def interruptible(run_dir: Path, started: float, accelerator: Accelerator) -> Iterator[None]:
    """Around training: a SIGTERM/SIGINT that stopped it (tunelab.train.interrupt) leaves run.json saying
    `interrupted`, with the signal and the checkpoint that `--resume` will continue from."""
    try:
        yield
    except Interrupted as e:
        if accelerator.is_main_process:
            write_json(RunDir(run_dir).file(RunDir.STATUS), {
                "status": "interrupted", "signal": signal.Signals(e.signum).name, "checkpoint": e.checkpoint,
                "started": started, "interrupted": time.time(), "tunelab": __version__,
                "processes": accelerator.num_processes})
        raise


def mark_completed(run_dir: Path, state: TrainState, started: float, resume: bool, accelerator: Accelerator,
                   verdict: Any, energy: dict[str, Any] | None = None) -> None:
    """run.json, written after every other file of the run: status 'completed' when the gate promoted the
    model, 'not-promoted' when it does not beat its baseline (serve and export then refuse it). ENERGY: the
    meter's record (none when energy.track is false)."""
    write_json(RunDir(run_dir).file(RunDir.STATUS), {
        "status": "completed" if verdict.promoted else "not-promoted", "started": started, "finished": time.time(),
        "tunelab": __version__, "processes": accelerator.num_processes, "resumed": resume,
        "best_epoch": state.best_epoch, "stop_reason": state.stop_reason, "gate": verdict.to_dict(),
        **({"energy": energy} if energy else {}), **_carried_trust(run_dir)})
