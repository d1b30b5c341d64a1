"""`tunelab plan`: before any training, what a spec will cost — peak memory by part, which methods fit a given
memory, and time and energy extrapolated from a few measured batches on this machine.

plan(spec) reads the data (lengths, batches per epoch), builds the task's model on the meta device once for
every method the task allows and applies the method to it (tunelab.auto.memory counts the result), and,
unless told not to, runs the probe (tunelab.auto.probe) for the spec's own method. The formulas and how close
they come to measured peaks are in docs/plan.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab import catalog
from tunelab.auto.memory import Batch, Shape, count_params, estimate
from tunelab.auto.probe import Probe, run_probe
from tunelab.spec.schema import RunSpec
from tunelab.tasks import get_task
from tunelab.tasks.base import CAUSAL_LM

VALIDATION_PROBE_EXAMPLES = 32  # validation examples the probe scores once, to time an epoch's evaluation


@dataclass
class MethodFit:
    """One row of the methods table: a method's estimated peak at the spec's batch size, and what fits."""

    method: str
    trainable_params: int | None
    peak_bytes: int | None
    fits: bool
    largest_batch: int | None  # the largest batch size whose estimate fits the budget (0: none)
    memory: dict[str, Any] | None  # the breakdown (tunelab.auto.memory.Memory.to_dict)
    note: str = ""


@dataclass
class Plan:
    """Everything `tunelab plan` reports; `to_dict()` is its JSON."""

    task: str
    base: str
    method: str
    device: str  # the device the memory estimate is for: cuda or cpu
    budget_bytes: int
    budget_source: str
    params: int
    trainable_params: int
    batch: dict[str, Any]  # size, tokens per example, and where that length comes from
    memory: dict[str, Any]  # the spec's method: weights, gradients, optimizer, activations, ..., total
    methods: list[MethodFit]
    probe: Probe | None = None
    time: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_budget() -> tuple[str, int, str]:
    """(device, bytes, where the figure comes from): the local GPU's memory, else this machine's RAM."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return "cuda", int(props.total_memory), f"local GPU ({props.name})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "cpu", int(ram), "this machine's RAM (no CUDA GPU here)"


def plan(spec: RunSpec, gpu_memory: int | None = None, probe_batches: int = 3, probe: bool = True) -> Plan:
    """The plan for SPEC. GPU_MEMORY (bytes): plan for a GPU of that size (in the dtype the task trains in on a
    GPU); default: this machine's GPU, else its RAM. PROBE_BATCHES: batches the probe times after a warm-up one;
    PROBE False (or 0 batches): no time or energy, and no weights are read."""
    if gpu_memory is not None:
        device, budget, budget_source = "cuda", gpu_memory, "--gpu-memory"
    else:
        device, budget, budget_source = default_budget()
    base = catalog.resolve(spec.model.base)
    catalog.check_loadable(base)
    task_cls = get_task(spec.task)
    prepared = task_cls.prepare_data(spec, base, True, tokenizer=_task(task_cls, spec, None, base).tokenizer)
    labels = prepared.labels or None
    rows, own_task, train, batch = [], None, None, None
    for method in type(spec).RULES.methods:
        variant = spec.model_copy(deep=True)
        variant.model.method = method
        refused = _refused(variant, base)
        if refused and method != spec.model.method:  # e.g. setfit on a base that is no sentence encoder
            rows.append(MethodFit(method, None, None, False, 0, None, f"not applicable: {refused}"))
            continue
        task = _task(task_cls, variant, labels, base)
        model = task.empty_model(base, device)  # loads the tokenizer of tasks whose model brings it
        if train is None:
            train = task.encode(prepared.splits["train"])
            batch = worst_batch(spec, train)
        rows.append(_method_row(method, task, model, variant, batch, device, budget, train))
        if method == spec.model.method:
            own_task = task
    own = next(r for r in rows if r.method == spec.model.method)
    notes = [f"the data have {len(prepared.errors)} error(s) (`tunelab data check SPEC` lists them); planned as "
             "`tunelab train --force` would run"] if prepared.errors else []
    result = Plan(spec.task, base, spec.model.method or "", device, budget, budget_source,
                  (own.memory or {}).get("params_total", 0), own.trainable_params or 0, batch.public,
                  own.memory or {}, rows, notes=notes + ((own.memory or {}).get("notes") or []))
    if probe and probe_batches > 0:
        validation = prepared.splits.get("validation")
        few = validation.select(range(min(len(validation), VALIDATION_PROBE_EXAMPLES))) if validation else None
        result.probe = run_probe(own_task, base, spec, train, own_task.encode(few) if few is not None else [],
                                 probe_batches)
        batches = len(own_task.train_loader(train, spec)[0])
        result.time, result.energy = extrapolate(result.probe, spec, batches, len(validation or []))
    return result


def _refused(spec: RunSpec, base: str) -> str:
    """Why SPEC's method cannot train this base ('' when it can): the method registry's own check, the one
    `fine_tune` runs before any work."""
    from tunelab.train import methods

    try:
        methods.for_spec(spec).check(spec, base)
    except (ValueError, RuntimeError) as err:
        return str(err)
    return ""


def _task(task_cls: Any, spec: RunSpec, labels: list[str] | None, base: str) -> Any:
    """The task for SPEC; a generative task's tokenizer is loaded first (its chat template may add tokens, which
    grow the model's embeddings)."""
    task = task_cls.from_spec(spec, labels)
    if task.family == CAUSAL_LM:
        task.load_tokenizer(base)
    return task


@dataclass
class WorstBatch:
    """The batch the estimate is for (the run's largest), with the words that say where its length comes from."""

    batch: Batch
    source: str

    @property
    def public(self) -> dict[str, Any]:
        return {"size": self.batch.size, "tokens_per_example": self.batch.length, "length_source": self.source,
                "trained_token_share": round(self.batch.trained_share, 4)}


def worst_batch(spec: RunSpec, train: Any) -> WorstBatch:
    """The largest batch of the run, from the measured lengths of the encoded training examples: classifier
    batches pad to their longest example (length-mixed batches group similar lengths); padding-free LM batches
    hold the sum of their examples; packed LM batches fill rows to data.max_length."""
    size = spec.training.batch_size
    lengths = sorted(train.lengths, reverse=True) or [spec.data.max_length or 1]
    share = 1.0
    if spec.generative:
        share = train.trained_tokens / max(sum(train.lengths), 1)
    if spec.generative and spec.training.batching == "packing":
        length, source = spec.data.max_length or lengths[0], "packing fills each row to data.max_length"
    elif spec.generative and spec.training.batching == "padding-free":
        top = lengths[:size]
        length = math.ceil(sum(top) / len(top))
        source = f"the {len(top)} longest training examples concatenated (padding-free), measured"
    else:
        length = lengths[0]
        source = f"the longest training example after truncation to data.max_length={spec.data.max_length}, measured"
    return WorstBatch(Batch(size, length, share, spec.generative), source)


def _method_row(method: str, task: Any, model: Any, spec: RunSpec, worst: WorstBatch, device: str, budget: int,
                train: Any) -> MethodFit:
    """Estimate METHOD's peak: apply it to the empty MODEL (through the task, so through the method registry)."""
    from tunelab.train.methods import base_bits

    bits = base_bits(method)
    act_bytes = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    try:
        model = task.apply_method(model, spec)
    except Exception as err:  # a method that cannot be built for this model: say why, keep the table going
        return MethodFit(method, None, None, False, None, None, f"not estimated: {type(err).__name__}: {err}")
    params = count_params(model, bits, act_bytes)
    shape = Shape.of(model)
    traced = traced_per_example(task, model, train) if shape is None else None
    memory = estimate(params, shape, worst.batch, device, traced)
    fits = memory.total <= budget
    note = ""
    if bits and device != "cuda":
        fits, note = False, "needs a CUDA GPU (bitsandbytes 4-bit kernels)"
    largest = memory.largest_batch(budget, worst.batch.size) if not note else 0
    return MethodFit(method, params.trainable, memory.total, fits, largest,
                     {**memory.to_dict(), "params_total": params.total, "params_trainable": params.trainable,
                      "params_quantized": params.quantized, "activation_dtype_bytes": act_bytes}, note)


def traced_per_example(task: Any, model: Any, train: Any, examples: int = 2) -> int | None:
    """Activation bytes per example of a real (not meta) model: the tensors autograd keeps during one training
    forward pass on EXAMPLES real examples, counted once per storage, weights left out. For the small image
    models, whose configs do not describe a transformer."""
    import torch

    if not len(train) or any(p.is_meta for p in model.parameters()):
        return None
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    n = min(examples, len(train))
    batch = task.collator()([train[i] for i in range(n)])
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        task.training_step(model, batch)
    return sum(kept.values()) // n


def extrapolate(probe: Probe, spec: RunSpec, batches: int, validation_examples: int) -> tuple[dict, dict | None]:
    """Time and energy of the whole run from the probe: seconds per batch x batches per epoch x epochs, plus one
    validation pass per epoch; energy at the probe's measured (or estimated) energy per second."""
    epochs = spec.training.epochs
    train_s = probe.seconds_per_batch * batches * epochs
    val_s = probe.validation_seconds_per_example * validation_examples * epochs
    total_s = train_s + val_s
    time = {"batches_per_epoch": batches,
            "optimizer_steps_per_epoch": math.ceil(batches / spec.training.gradient_accumulation_steps),
            "epochs": epochs, "train_seconds": round(train_s, 2), "validation_seconds": round(val_s, 2),
            "total_seconds": round(total_s, 2),
            "basis": f"{probe.batches} batch(es) timed on {probe.device} after a warm-up batch; a run that stops "
                     "early takes less, and generation on validation prompts is not included"}
    record = probe.energy
    if not record or not probe.batches:
        return time, None
    probe_seconds = probe.seconds_per_batch * probe.batches
    kwh = record["energy_kwh"] / probe_seconds * total_s if probe_seconds > 0 else 0.0
    grid = record["grid_intensity_g_per_kwh"]
    return time, {"energy_kwh": kwh, "co2_kg": kwh * grid / 1000, "grid_intensity_g_per_kwh": grid,
                  "grid_intensity_source": record["grid_intensity_source"], "method": record["method"],
                  "source": record["source"], "note": record["note"], "probe_energy_kwh": record["energy_kwh"],
                  "basis": "the probe's energy per second x the run's estimated seconds"}
