"""The planner's probe: a few real optimizer steps of the spec's model and method on real batches of its data,
timed after a warm-up step, with the energy meter running and the peak memory measured.

The steps are the training loop's own (`tunelab.train.loop.training_setup` and `train_step`: the task's
batches, parameter groups, loss, AdamW, clipping, the scheduler), so what is timed is what `tunelab train`
runs. Peak memory: on a GPU, torch's allocator peak (`torch.cuda.max_memory_allocated`, reset after the model
is loaded); on a CPU, the process's resident-memory high-water mark (VmHWM, reset through
/proc/self/clear_refs after the model is loaded) minus the resident memory before it was loaded. Both include
the weights, gradients, optimizer states and activations; the CPU figure also holds the allocator's and
PyTorch's own overhead, which is what the machine has to provide.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.auto.energy import EnergyMeter
from tunelab.spec.schema import RunSpec
from tunelab.tasks.base import CAUSAL_LM

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Probe:
    """What the probe measured on this machine."""

    device: str
    batches: int  # timed batches (after one untimed warm-up batch)
    batch_size: int
    seconds_per_batch: float
    validation_seconds_per_example: float
    peak_bytes: int | None
    peak_method: str
    energy: dict[str, Any] | None  # the energy meter's record over the timed batches (method: measured / estimate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kb(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status, in bytes (None off Linux)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux 4.0+); False where that is not possible."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand the C allocator's free pages back to the OS (glibc's malloc_trim), so that the
    resident memory measured next holds live data only; a no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


def resident_bytes() -> int | None:
    """This process's resident memory now (VmRSS)."""
    return _status_kb("VmRSS")


def peak_resident_bytes() -> int | None:
    """This process's resident-memory high-water mark (VmHWM) since start or the last reset."""
    return _status_kb("VmHWM")


def run_probe(task: Any, base: str, spec: RunSpec, train: Any, validation: Any, batches: int) -> Probe:
    """Load the model, apply the spec's method, and time BATCHES training batches after a warm-up one (each an
    optimizer step unless gradients accumulate), then score VALIDATION (a few encoded examples) once."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from tunelab.train.loop import training_setup, train_step

    set_seed(spec.training.seed)
    accelerator = Accelerator(gradient_accumulation_steps=spec.training.gradient_accumulation_steps)
    cuda = accelerator.device.type == "cuda"
    release_free_memory()  # what planning allocated and freed must not hide inside the baseline
    before = resident_bytes()
    model = task.apply_method(task.load_model(base), spec)
    model, optimizer, loader, sampler, scheduler = training_setup(model, task, train, spec, accelerator)
    peak_method = _reset_peak(cuda)
    model.train()
    sampler.set_epoch(0)
    task.on_epoch_start(accelerator.unwrap_model(model), 0)
    meter = EnergyMeter(spec.energy.grid_intensity, gpus=_gpu_ids(accelerator))
    timed, started = 0, 0.0
    for i, batch in enumerate(loader):
        if i == 1:  # the first batch warms up kernels and allocates the optimizer states: not timed
            _sync(cuda)
            meter.start()
            started = time.perf_counter()
        if i > batches:
            break
        train_step(model, task, batch, optimizer, scheduler, accelerator, spec.training.max_grad_norm)
        timed = i
    _sync(cuda)
    seconds = time.perf_counter() - started if timed else float("nan")
    energy = meter.stop() if timed else None
    peak = _peak(cuda, before)
    val_seconds = _validation_seconds(task, accelerator.unwrap_model(model), validation, spec)
    return Probe(str(accelerator.device), timed, spec.training.batch_size, seconds / max(timed, 1), val_seconds,
                 peak, peak_method, energy)


def _reset_peak(cuda: bool) -> str:
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated (tensors only; the CUDA context is not counted)"
    if reset_peak_rss():
        return "peak resident memory (VmHWM) minus resident memory before the model was loaded"
    return "peak resident memory since the process started (VmHWM could not be reset) minus memory before the model"


def _peak(cuda: bool, before: int | None) -> int | None:
    import torch

    if cuda:
        return int(torch.cuda.max_memory_allocated())
    peak = peak_resident_bytes()
    return None if peak is None or before is None else peak - before


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _gpu_ids(accelerator: Any) -> list[str]:
    """The probe's GPU as NVML names it (its UUID), for the energy meter; none on a CPU."""
    if accelerator.device.type != "cuda":
        return []
    import torch

    props = torch.cuda.get_device_properties(accelerator.device.index or 0)
    return [str(getattr(props, "uuid", f"cuda:{accelerator.device.index or 0}"))]


def _validation_seconds(task: Any, model: Any, validation: Any, spec: RunSpec) -> float:
    """Seconds per validation example, from scoring VALIDATION once as the recipe's per-epoch evaluation does
    (the loss for causal LMs, the logits for classifiers; generation on prompts is not timed)."""
    if not len(validation):
        return 0.0
    from tunelab.train.loop import predict_logits

    started = time.perf_counter()
    if task.family == CAUSAL_LM:
        task.evaluate_loss(model, validation, spec.training.eval_batch_size, show=False)
    else:
        predict_logits(model, validation, task.collator(), spec.training.eval_batch_size)
    return (time.perf_counter() - started) / len(validation)
