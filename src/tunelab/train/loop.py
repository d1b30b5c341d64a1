"""The training loop: accelerate for devices and processes, plain PyTorch for the rest.

A loop of our own (rather than HF Trainer) because three things matter here that the Trainer makes
awkward: a batch sampler that keeps labels mixed, atomic checkpoints that a kill cannot corrupt, and an
epoch-level task metric driving early stopping. It still runs unchanged under `accelerate launch`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tunelab.spec.schema import RunSpec
from tunelab.train import faults
from tunelab.train.checkpoints import (checkpoint_path, load_checkpoint, load_weights, remove_partial, restore_rng_of,
                                       save_checkpoint)
from tunelab.train.hooks import RunHooks
from tunelab.train.interrupt import Interrupted, stop_on_signals
from tunelab.train.optim import adamw

EARLY_STOPPING = "early-stopping"  # TrainState.stop_reason: no better validation metric for `patience` epochs
TIME_LIMIT = "time-limit"  # training.time_limit was reached


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped (saved in each checkpoint)."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches already consumed in the current epoch
    global_step: int = 0  # optimiser steps
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    stop_reason: str | None = None  # EARLY_STOPPING or TIME_LIMIT when training ended before its last epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    step_losses: list[list[float]] = field(default_factory=list)  # [global_step, loss]
    # the current epoch so far: its batch losses and what the task's training metrics need from each batch, so
    # an epoch resumed half-way reports the same train loss and metrics as one that ran through
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seen: list[Any] = field(default_factory=list)


def predict_logits(model: torch.nn.Module, encoded: Any, collator: Any, batch_size: int,
                   accelerator: Accelerator | None = None, desc: str = "scoring") -> np.ndarray:
    """Logits for every example, in the dataset's order. Batches are formed by length (fast), and
    under several processes each scores a share and the results are gathered."""
    order = np.argsort(encoded.lengths, kind="stable")
    loader = DataLoader(Subset(encoded, order.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collator)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    show = accelerator is None or accelerator.is_main_process
    chunks = []
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not show or len(loader) < 3):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits.float()
            if accelerator is not None:
                logits = accelerator.gather_for_metrics(logits)
            chunks.append(logits.cpu().numpy())
    model.train()
    sorted_logits = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    out = np.empty_like(sorted_logits)
    out[order] = sorted_logits
    return out


def evaluate_split(model: torch.nn.Module, task: Any, encoded: Any, truth: np.ndarray, batch_size: int,
                   accelerator: Accelerator | None = None, desc: str = "validation") -> dict[str, Any]:
    """Task metrics and loss of MODEL on one encoded split."""
    return split_metrics(task, predict_logits(model, encoded, task.collator(), batch_size, accelerator, desc), truth)


def split_metrics(task: Any, logits: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Task metrics and loss from a split's logits (callers that need the logits again keep them)."""
    metrics = task.metrics(truth, task.predict_ids(logits))
    metrics["loss"] = task.loss(logits, truth)
    return metrics


def training_setup(model: torch.nn.Module, task: Any, train: Any, spec: RunSpec,
                   accelerator: Accelerator) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, Any, Any]:
    """(model, optimizer, loader, sampler, scheduler) prepared by ACCELERATOR: the task's batches and parameter
    groups, AdamW, warmup + linear decay over spec.training.epochs. Shared by `fit` and the planner's probe."""
    t = spec.training
    loader, sampler = task.train_loader(train, spec)
    # a private generator for the loader: creating an iterator draws a seed from it, and drawing from the
    # global generator instead would shift dropout's random stream at every epoch start and resume
    loader.generator = torch.Generator().manual_seed(t.seed)
    optimizer = adamw(task.param_groups(model, spec.learning_rate, t.weight_decay), spec.learning_rate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = math.ceil(len(loader) / t.gradient_accumulation_steps) * t.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(t.warmup * total)), total)
    return model, optimizer, loader, sampler, scheduler


def train_step(model: torch.nn.Module, task: Any, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               scheduler: Any, accelerator: Accelerator, max_grad_norm: float) -> tuple[torch.Tensor, Any]:
    """One batch of training: the task's loss, backward, clipping, and an optimizer step when the accumulation
    window closes. Returns (loss, what the task's training metrics need). Shared by `fit` and the planner's
    timing probe (tunelab.auto.probe), so the probe times exactly what training runs."""
    with accelerator.accumulate(model):
        step_loss, tracked = task.training_step(model, batch)
        accelerator.backward(step_loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step() if accelerator.sync_gradients else None
        optimizer.zero_grad(set_to_none=True)
    return step_loss, tracked


class Deadline:
    """training.time_limit as a deadline that every process agrees on: under several processes the first one
    past it stops them all at the same step (one all-reduce of a flag per optimiser step), so none waits
    forever in a collective that the others have left."""

    def __init__(self, seconds: float | None, accelerator: Accelerator) -> None:
        self.at = time.monotonic() + seconds if seconds else None
        self.accelerator = accelerator

    def passed(self) -> bool:
        if self.at is None:
            return False
        over = time.monotonic() >= self.at
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(over)], device=self.accelerator.device)
            over = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return over


def fit(model: torch.nn.Module, task: Any, train: Any, spec: RunSpec, run_dir: Path, accelerator: Accelerator,
        evaluate: Callable[[torch.nn.Module], dict[str, Any]], resume: bool = False,
        hooks: RunHooks | None = None) -> TrainState:
    """Train with warmup + linear decay, score the validation split each epoch with EVALUATE (the recipe's:
    task metrics for classifiers, loss and generation metrics for LMs), stop early, and leave the best
    epoch's weights in MODEL. Checkpoints go to run_dir/checkpoints (main process).

    TASK (tunelab.tasks.base.Task) brings the batching (`train_loader`), the step's loss (`training_step`),
    the optimizer groups (`param_groups`) and what changes between epochs (`on_epoch_start`). HOOKS
    (tunelab.train.hooks) hear each epoch's validation metrics; a search's pruner may stop the run there.

    Resume is exact: with RESUME the run continues from the `LATEST` checkpoint (tunelab.train.checkpoints
    says what it holds) and ends with the same weights, metrics and history, bit for bit, as a run that was
    never stopped. SIGTERM/SIGINT finish the optimizer step, write a checkpoint and raise `Interrupted`
    (tunelab.train.interrupt).

    training.time_limit ends training like early stopping: the step under way finishes, the (possibly partial)
    epoch is validated and checkpointed, and the best epoch's weights are kept; state.stop_reason says which
    rule stopped it. The limit counts from this call (a resumed run gets the whole limit again)."""
    with stop_on_signals() as stop:
        return _fit(model, task, train, spec, run_dir, accelerator, evaluate, resume, hooks, stop)


def _fit(model: torch.nn.Module, task: Any, train: Any, spec: RunSpec, run_dir: Path, accelerator: Accelerator,
         evaluate: Callable[[torch.nn.Module], dict[str, Any]], resume: bool, hooks: RunHooks | None,
         stop: Any) -> TrainState:
    t = spec.training
    deadline = Deadline(t.time_limit, accelerator)
    model, optimizer, loader, sampler, scheduler = training_setup(model, task, train, spec, accelerator)
    state = TrainState()
    checkpoint = checkpoint_path(run_dir) if resume else None
    if resume and accelerator.is_main_process:
        removed = remove_partial(run_dir)
        if removed:
            accelerator.print(f"removed {len(removed)} unfinished checkpoint write(s): {', '.join(removed)}")
    if checkpoint is not None:
        state = TrainState(**load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler,
                                             restore_rng=False))
        accelerator.print(f"resumed from {checkpoint.name}: epoch {state.epoch + 1}, batch {state.step_in_epoch}")

    def save(tag: str, pointer: str = "LATEST") -> str:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            extra = (optimizer, scheduler) if pointer == "LATEST" else (None, None)
            return save_checkpoint(run_dir, tag, accelerator.unwrap_model(model), asdict(state), *extra,
                                   pointer=pointer, everything=task.checkpoint_everything).name
        return tag

    model.train()
    if checkpoint is not None:  # last, so that nothing done while setting up draws from the restored generators
        restore_rng_of(checkpoint)
    for epoch in range(state.epoch, t.epochs):
        if state.stopped_early:
            break
        loader.set_epoch(epoch)  # accelerate's loader: sets the sampler's epoch and its own iteration count alike
        sampler.set_epoch(epoch)
        task.on_epoch_start(accelerator.unwrap_model(model), epoch, state.step_in_epoch)
        if state.step_in_epoch >= len(loader):
            epoch_loader: Any = []  # the epoch's batches were all done before the interruption
        elif state.step_in_epoch:
            epoch_loader = skip_first_batches(loader, state.step_in_epoch)
        else:
            epoch_loader = loader
        epoch_started = time.perf_counter()
        bar = tqdm(epoch_loader, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not accelerator.is_main_process,
                   leave=False, initial=state.step_in_epoch, total=len(loader))
        for batch in bar:
            step_loss, tracked = train_step(model, task, batch, optimizer, scheduler, accelerator, t.max_grad_norm)
            loss = step_loss.detach().float().item()
            state.epoch_losses.append(loss)
            if tracked is not None:
                state.epoch_seen.append(tracked)
            state.step_in_epoch += 1
            if accelerator.sync_gradients:
                state.global_step += 1
                state.step_losses.append([state.global_step, loss])
                bar.set_postfix(loss=f"{loss:.4f}")
                faults.point("step")
                if stop.requested(accelerator):
                    bar.close()
                    raise Interrupted(stop.signum, save(f"step-{state.global_step:07d}"))
                last_batch = state.step_in_epoch >= len(loader)  # the epoch's own checkpoint follows at once
                if t.checkpoint_steps and state.global_step % t.checkpoint_steps == 0 and not last_batch:
                    save(f"step-{state.global_step:07d}")
                if deadline.passed():
                    state.stop_reason = TIME_LIMIT
                    break
        if state.stop_reason == TIME_LIMIT:
            bar.close()
            epoch_loader.end()  # the loop left the loader early: release it from accelerate's gradient state
        train_seconds = time.perf_counter() - epoch_started
        val = evaluate(model)
        losses = state.epoch_losses
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": scheduler.get_last_lr()[0], **task.train_metrics(state.epoch_seen)}
        row.update({f"val_{k}": v for k, v in val.items() if not isinstance(v, (dict, list))})
        row.update(train_seconds=round(train_seconds, 2),
                   val_seconds=round(time.perf_counter() - epoch_started - train_seconds, 2))
        if state.stop_reason == TIME_LIMIT:  # the epoch was cut short: say how far it got
            row.update(partial=True, batches=state.step_in_epoch)
        state.history.append(row)
        score = val[spec.evaluation.metric]
        improved = state.best_metric is None or (score < state.best_metric if spec.lower_is_better
                                                 else score > state.best_metric)
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        else:
            state.bad_epochs += 1
        patience = t.early_stopping_patience
        more = epoch + 1 < t.epochs
        if state.stop_reason is None and more and deadline.passed():  # the limit fell at the epoch's end
            state.stop_reason = TIME_LIMIT
        if state.stop_reason is None and patience and state.bad_epochs >= patience and more:
            state.stop_reason = EARLY_STOPPING
        state.stopped_early = state.stop_reason is not None
        state.epoch, state.step_in_epoch = epoch + 1, 0
        state.epoch_losses, state.epoch_seen = [], []
        shown = "" if spec.evaluation.metric == "loss" else f"  val {spec.evaluation.metric} {score:.4f}"
        accelerator.print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}  val loss {val['loss']:.4f}"
                          f"{shown}{'  (best)' if improved else ''}")
        if hooks is not None:
            hooks.epoch_end(epoch + 1, val)  # may raise to stop the run (a pruned search trial)
        if improved:
            save(f"best-epoch-{epoch + 1:04d}", pointer="BEST")
        latest = save(f"step-{state.global_step:07d}")
        faults.point("epoch")
        if state.stop_reason == EARLY_STOPPING:
            accelerator.print(f"early stop: no better validation {spec.evaluation.metric} for {patience} epoch(s)")
        elif state.stop_reason == TIME_LIMIT:
            accelerator.print(f"time limit: stopped after {t.time_limit:g} s (training.time_limit), in epoch "
                              f"{epoch + 1} of {t.epochs}; the best epoch is kept")
        if stop.requested(accelerator) and (more and not state.stopped_early):
            raise Interrupted(stop.signum, latest)
    accelerator.wait_for_everyone()
    best = checkpoint_path(run_dir, "BEST")
    if best is not None:
        load_weights(accelerator.unwrap_model(model), best)
    return state
