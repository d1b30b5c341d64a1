"""tunelab vs Hugging Face Trainer: LoRA fine-tuning of a Llama-shaped causal LM on chat examples.

What: arms on the same model weights, data, per-step batches, steps, optimiser settings and seed, in one
process (random-init weights: throughput does not depend on them):
  hf_plain   HF Trainer, every batch padded to its longest example (the common recipe), SDPA attention
  hf_group   HF Trainer, pad to longest + train_sampling_strategy="group_by_length" (GPU default only;
             its own batch order, so its losses are not compared step by step)
  hf_flat    HF Trainer, padding-free batches (DataCollatorWithFlattening: one row, position_ids restart
             per example); on SDPA transformers then masks the row block-diagonally
  hf_tuned   hf_flat + Liger kernels (`use_liger_kernel`) where liger_kernel imports; without Liger it is
             hf_flat under another name, and is skipped when hf_flat also runs
  tunelab    tunelab's own loop, `tunelab.train.loop.fit`, on `ChatTask`-encoded features: padding-free
             `flatten` batches with cu_seq_lens, `tunelab_varlen` attention (or flash_attention_2 where
             installed: `training_attention()`), `lm_loss` with logits only at trained positions,
             LoRA from the task's `apply_method` (`tunelab.train.methods`)
LoRA r=16, alpha 32, dropout 0, all linear layers except lm_head, in every arm; AdamW (fused), lr 2e-4,
weight decay 0.01 (tunelab's default; HF's default is 0, set to match), grad-norm clip 1.0, linear warmup
over round(0.1 * total) steps then linear decay (tunelab's schedule; HF given the same warmup_steps).

Data: synthetic chat conversations (system + user + assistant, words drawn from the tokenizer's vocabulary)
rendered by the SmolLM2 ChatML template through `ChatTask.encode`, loss on the assistant reply only; total
lengths log-normal (or all equal with --shape 8b). Exactly (warmup + steps) * batch examples, so tunelab's
`fit` runs one epoch; its `BinBatchSampler` order for epoch 0 (seeded) is computed first and the HF arms
train on the dataset laid out in that order with train_sampling_strategy="sequential", so all arms but
hf_group see the same examples in the same batches. Every arm records, per step, the real (non-pad) token
count and a checksum of the real token ids, and the script checks they agree.

Timing: a global optimizer-step post hook timestamps the end of every optimiser step in every arm (after a
CUDA synchronize on GPU); the measured span is from the end of the last warmup step to the end of the last
step, real tokens are those of the measured steps. tunelab's `fit` gets `evaluate=lambda m: {"loss": 0.0}`
so no validation work is done; its checkpoint writes come after the last step and are not timed.
Peak memory: CUDA max_memory_allocated (reset per arm); on the CPU the process's resident-set high-water
mark (VmHWM, reset per arm through /proc/self/clear_refs, else sampled) minus the RSS at the arm's start,
read at the last training step. Both include the arm's model.
MFU (GPU): training FLOPs per real token D + 6*L*h*n, D = L*h^2*(12 + 12*kv/H + 18*ffn/h) + 6*V*h, n the
token-weighted mean example length, times 2/3 for LoRA, over a matmul rate measured in the same run (bf16
8192^3 on GPU; fp32 1024^3 on the CPU, where the figure means little), as in
../shared/bench/hf_trainer_llm_gpu.py.
Loss agreement: per-step training losses (token-mean over trained tokens) of each arm against hf_plain,
within 1e-3 in fp32 (0.02 in bf16). A leak control reports how far the first batch's loss moves when the
examples of a row attend to each other, to show the tolerance would catch a masking bug.

Commands:
  CPU (recorded; 1 thread because other jobs share the cores, see docs/benchmarks.md):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/causal_lm.py --threads 1 --repeats 2
  GPU, 1B shape (the reference measured 111.7 GiB for its padded arm: use an H200-class card):
    HF_HUB_OFFLINE=1 python benchmarks/causal_lm.py --device cuda --shape 1b --json-out $OUT/causal_lm_cuda_1b.json
  GPU, 8B shape:
    HF_HUB_OFFLINE=1 python benchmarks/causal_lm.py --device cuda --shape 8b --json-out $OUT/causal_lm_cuda_8b.json
  smoke test of a plan on any machine (tiny dims, short lengths, 3 steps; timings meaningless): add --smoke
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # fit's progress bar; it reads this at construction

ROOT = Path(__file__).resolve().parents[1]
ALL_ARMS = ("hf_plain", "hf_group", "hf_flat", "hf_tuned", "tunelab")
DEFAULT_ARMS = {"tiny": "hf_plain,hf_tuned,tunelab", "1b": "hf_plain,hf_group,hf_flat,hf_tuned,tunelab",
                "8b": "hf_plain,hf_tuned,tunelab"}
LORA_R, LORA_ALPHA, LR, WEIGHT_DECAY, WARMUP_FRACTION = 16, 32, 2e-4, 0.01, 0.1
LOSS_TOLERANCE = 0.02

# model shapes (vocab None: the tokenizer's)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=None, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,  # Llama-3.2-1B
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True,
               rope_theta=500000.0),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,  # Llama-3.1-8B
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, tie_word_embeddings=False,
               rope_theta=500000.0),
}
SMOKE_SHAPE = dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=2048)
# data and schedule: batch, log-normal median and sigma of the total length, clamp, fixed length (0: log-normal)
PLANS: dict[str, dict[str, Any]] = {
    "tiny": dict(batch=8, median=100, sigma=0.6, min_len=24, max_len=512, fixed=0, steps=20, warmup=3),
    "1b": dict(batch=16, median=400, sigma=0.8, min_len=32, max_len=2048, fixed=0, steps=20, warmup=4),
    "8b": dict(batch=2, median=4096, sigma=0.0, min_len=4096, max_len=4096, fixed=4096, steps=20, warmup=4),
}
SMOKE_PLANS: dict[str, dict[str, Any]] = {
    "tiny": dict(batch=4, median=60, sigma=0.6, min_len=24, max_len=256, fixed=0, steps=3, warmup=2),
    "1b": dict(batch=16, median=50, sigma=0.8, min_len=24, max_len=256, fixed=0, steps=3, warmup=2),
    "8b": dict(batch=2, median=512, sigma=0.0, min_len=512, max_len=512, fixed=512, steps=3, warmup=2),
}


# -- machine facts and measurement helpers -------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
    return platform.processor() or "unknown"


def machine_facts(device: str) -> dict[str, Any]:
    import accelerate
    import peft
    import torch
    import transformers

    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
             "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
             "device": device, "load_average_at_start": list(os.getloadavg())}
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
    try:
        import liger_kernel  # noqa: F401

        facts["liger_kernel"] = True
    except Exception:  # any import failure (missing, or no triton on the CPU) means no Liger
        facts["liger_kernel"] = False
    try:
        import flash_attn  # noqa: F401

        facts["flash_attn"] = True
    except Exception:
        facts["flash_attn"] = False
    return facts


def matmul_peak(device: str) -> float:
    """Measured matmul FLOP/s: bf16 8192^3 on a GPU, fp32 1024^3 on the CPU (as the reference script)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(n, n, device=device, dtype=dt)
    y = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        x @ y
    if device == "cuda":
        torch.cuda.synchronize()
    t, r = time.perf_counter(), 10
    for _ in range(r):
        x @ y
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * r / (time.perf_counter() - t)


def flops_per_token(cfg: Any, n_eff: float, lora: bool) -> float:
    """Training FLOPs per real token (the formula of ../shared/bench/hf_trainer_llm_gpu.py)."""
    L, h, H, kv, ffn, V = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                           cfg.intermediate_size, cfg.vocab_size)
    D = L * h * h * (12 + 12 * kv / H + 18 * ffn / h) + 6 * V * h
    return (D + 6 * L * h * n_eff) * (2 / 3 if lora else 1)


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Per-arm peak memory: CUDA max_memory_allocated, or the CPU process's RSS high-water mark above the
    arm's starting RSS (VmHWM reset through /proc/self/clear_refs; a 5 ms sampling thread where that fails)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.start = 0
        self.method = ""
        self._sampled = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:  # give freed heap back to the OS so the next arm starts from a clean RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
        self.start = _rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            if _status_kib("VmHWM") is not None:
                self.method = "VmHWM minus RSS at arm start"
                return
        except OSError:
            pass  # deliberate: no resettable high-water mark here; fall back to sampling RSS below
        self.method = "sampled RSS (5 ms) minus RSS at arm start"
        self._sampled = self.start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._sampled = max(self._sampled, _rss_bytes())
                self._stop.wait(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def peak(self) -> int:
        """Peak bytes since reset (CPU: above the starting RSS)."""
        import torch

        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        if self._thread is not None:
            return max(self._sampled, _rss_bytes()) - self.start
        return (_status_kib("VmHWM") or 0) * 1024 - self.start

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = self._thread = None


class StepClock:
    """Timestamps the end of every optimiser step of any optimiser (global post hook), and reads the peak
    memory at the last one, so every arm is timed and measured at the same point of its loop."""

    def __init__(self, device: str, total_steps: int, memory: PeakMemory) -> None:
        self.device, self.total, self.memory = device, total_steps, memory
        self.times: list[float] = []
        self.peak_at_last_step: int | None = None
        self.handle: Any = None

    def __enter__(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self._hook)
        return self

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        if len(self.times) == self.total:
            self.peak_at_last_step = self.memory.peak()

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


def record_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Real (non-pad) tokens, trained tokens and a checksum of the real ids of one batch (tensors, read later)."""
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    if mask is not None:
        real, idsum = mask.sum(), (ids * mask).sum()
    else:
        real, idsum = ids.numel(), ids.sum()
    return {"real": real, "idsum": idsum, "trained": (labels[..., 1:] != -100).sum()}


def _num(x: Any) -> float:
    return float(x.detach().float().item()) if hasattr(x, "detach") else float(x)


# -- data ---------------------------------------------------------------------------------------
def make_conversations(tokenizer: Any, n: int, plan: dict[str, Any], seed: int) -> tuple[list[dict], list[int]]:
    """N chat conversations whose rendered length follows PLAN; returns (rows, target lengths)."""
    from tunelab.lm.chat_format import render_chat

    rng = random.Random(seed)
    vocab = tokenizer.get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha()
                   and 3 <= len(t) - 1 <= 10 and t[1:].islower())
    system = "You are a helpful assistant."
    overhead = len(render_chat(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "b"}]).input_ids) - 2
    if plan["fixed"]:
        targets = [plan["fixed"]] * n
    else:
        targets = [int(min(max(round(rng.lognormvariate(math.log(plan["median"]), plan["sigma"])), plan["min_len"]),
                           plan["max_len"])) for _ in range(n)]
    rows = []
    for i, total in enumerate(targets):
        content = max(total - overhead, 8) + (32 if plan["fixed"] else 0)  # fixed: overshoot, truncation cuts
        answer = max(2, round(content * rng.uniform(0.3, 0.7)))
        prompt = max(2, content - answer)
        rows.append({"messages": [{"role": "system", "content": system},
                                  {"role": "user", "content": " ".join(rng.choices(words, k=prompt))},
                                  {"role": "assistant", "content": " ".join(rng.choices(words, k=answer))}],
                     "location": f"synthetic:{i}"})
    return rows, targets


# -- arms ---------------------------------------------------------------------------------------
def build_model(cfg: Any, attn: str, dtype: Any, device: str, seed: int) -> Any:
    """Random-init Llama with identical weights in every arm (same seed, same construction order)."""
    import torch
    from transformers import LlamaForCausalLM

    c = copy.deepcopy(cfg)
    c._attn_implementation = attn
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(c)
    finally:
        torch.set_default_dtype(previous)
    return model


def weight_checksum(model: Any) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.detach().float().sum() for n, p in model.named_parameters() if "lora_B" not in n))


def run_hf(arm: str, ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    device, plan = ctx["device"], ctx["plan"]
    liger = arm == "hf_tuned" and ctx["machine"]["liger_kernel"]
    flat = arm in ("hf_flat", "hf_tuned")
    model = build_model(ctx["cfg"], "sdpa", ctx["dtype"], device, ctx["seed"])
    model.config.pad_token_id = ctx["pad_id"]
    checksum = weight_checksum(model)
    torch.manual_seed(ctx["seed"] + 1)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    records: list[dict[str, Any]] = []
    pad_id = ctx["pad_id"]

    def pad_collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
        lab = torch.full((len(features), longest), -100, dtype=torch.long)
        att = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            lab[i, :n] = torch.tensor(f["labels"])
            att[i, :n] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    class RecordingTrainer(Trainer):
        """Trainer unchanged except that each step's batch figures and returned loss are kept."""

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            rec = record_batch(inputs)
            loss = super().training_step(model, inputs, *args, **kwargs)
            rec["loss"] = loss
            records.append(rec)
            return loss

    args = TrainingArguments(
        output_dir=str(ctx["tmp"] / arm), per_device_train_batch_size=plan["batch"], max_steps=ctx["total"],
        learning_rate=LR, warmup_steps=ctx["warmup_lr_steps"], lr_scheduler_type="linear", weight_decay=WEIGHT_DECAY,
        max_grad_norm=1.0, optim="adamw_torch_fused", bf16=device == "cuda", logging_steps=10 ** 6,
        save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False, seed=ctx["seed"],
        train_sampling_strategy="group_by_length" if arm == "hf_group" else "sequential",
        dataloader_num_workers=2 if device == "cuda" else 0, use_liger_kernel=liger)
    collate = DataCollatorWithFlattening() if flat else pad_collate
    trainer = RecordingTrainer(model=model, args=args, train_dataset=ctx["hf_ordered"], data_collator=collate)
    with StepClock(device, ctx["total"], ctx["memory"]) as clock:
        trainer.train()
    out = {"attention": "sdpa" + (" (block-diagonal mask from position_ids)" if flat else ""),
           "batching": "padding-free (DataCollatorWithFlattening)" if flat else "pad to longest in batch",
           "liger": liger, "weights_checksum": checksum, "order": "group_by_length" if arm == "hf_group" else "shared"}
    del trainer, model
    return finish(out, clock, records)


def run_tunelab(ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from tunelab.lm.batching import training_attention
    from tunelab.train.loop import fit

    device = ctx["device"]
    task, spec = ctx["task"], ctx["spec"]
    # task.load_model's choices, on a random-init model instead of a folder: tunelab's training attention,
    # bf16 on a bf16 GPU, fp32 otherwise, pad id from the tokenizer
    attn = training_attention()
    dtype = torch.float32
    if device == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = build_model(ctx["cfg"], attn, dtype, device, ctx["seed"])
    model.config.pad_token_id = task.tokenizer.pad_token_id
    checksum = weight_checksum(model)
    torch.manual_seed(ctx["seed"] + 1)
    model = task.apply_method(model, spec)
    records = task.records = []
    run_dir = ctx["tmp"] / "tunelab_run"
    with StepClock(device, ctx["total"], ctx["memory"]) as clock:
        state = fit(model, task, ctx["encoded"], spec, run_dir, Accelerator(), evaluate=lambda m: {"loss": 0.0})
    out = {"attention": attn, "batching": "padding-free (tunelab flatten, cu_seq_lens)", "liger": False,
           "weights_checksum": checksum, "order": "shared",
           "fit_epoch_train_seconds": state.history[0]["train_seconds"], "fit_steps": state.global_step}
    del model, state
    return finish(out, clock, records)


def finish(out: dict[str, Any], clock: StepClock, records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{k: _num(v) for k, v in r.items()} for r in records]
    out.update(times=clock.times, per_step=rows, peak_bytes=clock.peak_at_last_step)
    return out


def leak_control(ctx: dict[str, Any], batch_ids: list[int]) -> dict[str, float]:
    """How far the first batch's loss moves when examples are NOT kept apart (one causal attention over the
    whole concatenated row, positions not restarted): the loss difference a masking bug would show, to
    judge the loss-agreement tolerance against. Forward only, on the initial weights, tunelab's collator."""
    import torch

    from tunelab.lm.batching import flatten, lm_loss, training_attention

    model = build_model(ctx["cfg"], training_attention(), ctx["dtype"], ctx["device"], ctx["seed"])
    batch = flatten([ctx["encoded"][i] for i in batch_ids])
    batch = {k: (v.to(ctx["device"]) if torch.is_tensor(v) else v) for k, v in batch.items()}
    with torch.no_grad():
        kept_apart = float(lm_loss(model, batch)[0])
        model.config._attn_implementation = "sdpa"  # read at each forward by the attention layers
        leaky = float(lm_loss(model, {k: batch[k] for k in ("input_ids", "labels")})[0])
    del model
    return {"loss_examples_kept_apart": kept_apart, "loss_attending_across_examples": leaky,
            "abs_diff": abs(kept_apart - leaky)}


# -- summary ------------------------------------------------------------------------------------
def summarise(arm: str, runs: list[dict[str, Any]], warmup: int, total: int, fpt: float,
              peak_flops: float) -> dict[str, Any]:
    """Pool an arm's repeats: real tokens and seconds of the measured steps summed over repeats."""
    for r in runs:
        if len(r["times"]) != total or len(r["per_step"]) != total:
            raise RuntimeError(f"{arm}: expected {total} optimiser steps, saw {len(r['times'])} timestamps / "
                               f"{len(r['per_step'])} batches")
    spans = [r["times"][-1] - r["times"][warmup - 1] for r in runs]
    reals = [int(sum(s["real"] for s in r["per_step"][warmup:])) for r in runs]
    # per measured step: its duration (median over repeats); the first repeat's losses and batches
    durations = [statistics.median(r["times"][k] - r["times"][k - 1] for r in runs) for k in range(warmup, total)]
    first = runs[0]
    steps = first["per_step"]
    losses = [s["loss"] for s in steps]
    repeat_loss_diff = max((abs(x - y) for r in runs[1:] for x, y in zip(losses, (s["loss"] for s in r["per_step"]))),
                           default=0.0)
    tok_s = sum(reals) / sum(spans)
    peaks = [r["peak_bytes"] for r in runs if r["peak_bytes"] is not None]
    return {"arm": arm, "repeats": len(runs), "measured_steps": total - warmup, "real_tokens": reals[0],
            "trained_tokens": int(sum(s["trained"] for s in steps[warmup:])), "seconds": sum(spans) / len(runs),
            "seconds_per_repeat": spans, "real_tokens_per_s": tok_s,
            "real_tokens_per_s_per_repeat": [x / y for x, y in zip(reals, spans)],
            "mfu": tok_s * fpt / peak_flops, "peak_bytes": max(peaks) if peaks else None, "losses": losses,
            "final_loss": losses[-1], "max_loss_diff_between_repeats": repeat_loss_diff,
            "step_seconds": durations, "batch_fingerprint": [(int(s["real"]), int(s["idsum"])) for s in steps],
            **{k: v for k, v in first.items() if k not in ("times", "per_step", "peak_bytes")}}


def gib(b: int | None) -> str:
    return "–" if b is None else f"{b / 2 ** 30:.2f}"


def table(summary: list[dict[str, Any]], device: str) -> str:
    """Markdown table; MFU only on a GPU (on the CPU the matmul rate it divides by is not a meaningful peak)."""
    gpu = device == "cuda"
    mem = "peak GiB" if gpu else "peak RSS +GiB"
    head = ["arm", "steps", "real tokens", "seconds", "real tok/s", "vs hf_plain", "median per-step speed-up", mem,
            *(["MFU"] if gpu else []), "final loss", "max abs loss diff vs hf_plain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        ratio = f"{s['ratio_vs_hf_plain']:.2f}x" if s.get("ratio_vs_hf_plain") else "–"
        step = f"{s['median_step_speedup_vs_hf_plain']:.2f}x" if s.get("median_step_speedup_vs_hf_plain") else "–"
        diff = s.get("max_abs_loss_diff_vs_hf_plain")
        diff = "–" if diff is None else (f"{diff:.1e}" if isinstance(diff, float) else diff)
        reps = f" (x{s['repeats']})" if s["repeats"] > 1 else ""
        cells = [s["arm"], f"{s['measured_steps']}{reps}", f"{s['real_tokens']:,}", f"{s['seconds']:.1f}",
                 f"{s['real_tokens_per_s']:,.0f}", ratio, step, gib(s["peak_bytes"]),
                 *([f"{s['mfu']:.3f}"] if gpu else []), f"{s['final_loss']:.4f}", diff]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=["tiny", "1b", "8b"], default=None,
                   help="model shape and data plan (default: tiny on cpu, 1b on cuda)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model dims, short lengths, few steps, on CUDA if present else the CPU: "
                        "checks that a plan runs")
    p.add_argument("--arms", default=None, help=f"comma list from {','.join(ALL_ARMS)} (default depends on --shape)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per arm")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (>= 1)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1,
                   help="run the arms this many rounds (order reversed every other round) and pool the timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; use 1 on CPU cores other jobs share (see docs/benchmarks.md)")
    p.add_argument("--no-leak-check", action="store_true", help="skip the loss-sensitivity control")
    p.add_argument("--json-out", default=None,
                   help="default: benchmarks/results/causal_lm_cpu.json for the full CPU run; none for smoke runs")
    a = p.parse_args()
    shape = a.shape or ("1b" if a.device == "cuda" else "tiny")
    arms = [x.strip() for x in (a.arms or DEFAULT_ARMS[shape]).split(",") if x.strip()]
    if bad := [x for x in arms if x not in ALL_ARMS]:
        p.error(f"unknown arm(s) {bad}; choose from {ALL_ARMS}")

    import datasets
    import torch
    import transformers
    from transformers import LlamaConfig

    from tunelab import catalog
    from tunelab.lm.batching import BinBatchSampler
    from tunelab.spec import parse_spec
    from tunelab.tasks.causal_lm import ChatTask

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device
    if device == "cuda" and not torch.cuda.is_available():
        if not a.smoke:
            print("no CUDA device: run the GPU plan with --smoke to check it on the CPU, or use --device cpu")
            return 2
        device = "cpu"
        print("smoke test: no CUDA device, running the plan on the CPU", flush=True)
    plan = dict((SMOKE_PLANS if a.smoke else PLANS)[shape])
    for k in ("steps", "warmup", "batch"):
        if getattr(a, k) is not None:
            plan[k] = getattr(a, k)
    if plan["warmup"] < 1:
        p.error("--warmup must be at least 1 (the span starts at the end of the last warmup step)")
    machine = machine_facts(device)
    print("machine:", json.dumps(machine), flush=True)
    busy = os.getloadavg()[0]
    if device == "cpu" and torch.get_num_threads() > 1 and busy > 0.5:
        print(f"warning: load average {busy:.1f} before the run, and torch uses {torch.get_num_threads()} threads. "
              "When other processes share the cores, every parallel op waits for a descheduled OpenMP thread "
              "(measured here: a small op 8 ms instead of 0.04 ms), which penalises the arm with more small ops; "
              "pass --threads 1 for comparable numbers.", flush=True)

    class RecordingChatTask(ChatTask):
        """ChatTask unchanged except that each training step's batch figures and loss are kept."""

        records: list[dict[str, Any]] = []

        def training_step(self, model: Any, batch: dict[str, Any]) -> Any:
            rec = record_batch(batch)
            loss, tracked = super().training_step(model, batch)
            rec["loss"] = loss.detach()
            self.records.append(rec)
            return loss, tracked

    # tokenizer and data: the SmolLM2 tokenizer and ChatML template, through tunelab's chat encoding
    total = plan["warmup"] + plan["steps"]
    n = total * plan["batch"]
    task = RecordingChatTask(max_length=plan["max_len"], batching="padding-free")
    task.load_tokenizer(catalog.resolve("SmolLM2-135M-Instruct"))
    rows, _ = make_conversations(task.tokenizer, n, plan, a.seed)
    encoded = task.encode(datasets.Dataset.from_list(rows))
    if len(encoded) != n:
        raise RuntimeError(f"{n - len(encoded)} synthetic example(s) had no trained token")
    lengths = encoded.lengths
    if plan["fixed"] and set(lengths) != {plan["fixed"]}:
        raise RuntimeError(f"expected every example {plan['fixed']} tokens, got {min(lengths)}..{max(lengths)}")
    sampler = BinBatchSampler(n, plan["batch"], a.seed)  # fit's own order for epoch 0, shared with the HF arms
    sampler.set_epoch(0)
    batches = list(sampler)
    hf_ordered = [encoded[i] for b in batches for i in b]
    trained_share = encoded.trained_tokens / sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    data = {"examples": n, "batch": plan["batch"], "steps": plan["steps"], "warmup_steps": plan["warmup"],
            "length_plan": plan, "length_median": statistics.median(lengths), "length_mean": statistics.fmean(lengths),
            "length_max": max(lengths), "length_min": min(lengths), "real_tokens": sum(lengths),
            "trained_token_share": trained_share, "padded_tokens_if_pad_to_longest": padded,
            "padding_share_pad_to_longest": 1 - sum(lengths) / padded}
    print("data:", json.dumps({k: v for k, v in data.items() if k != "length_plan"}), flush=True)

    vocab = len(task.tokenizer)
    shape_kw = dict(SMOKE_SHAPE if a.smoke else SHAPES[shape])
    if shape_kw["vocab_size"] is None:
        shape_kw["vocab_size"] = vocab
    cfg = LlamaConfig(**shape_kw, bos_token_id=task.tokenizer.bos_token_id, eos_token_id=task.tokenizer.eos_token_id,
                      pad_token_id=task.tokenizer.pad_token_id)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # fp32 arms agree to ~1e-5, so 1e-3 still catches a masking bug (the leak control below moves the loss
    # by ~6e-3 on the tiny model); bf16 arms differ by rounding, so there 0.02 (the figure)
    tolerance = 1e-3 if dtype == torch.float32 else 0.02
    warmup_lr_steps = int(round(WARMUP_FRACTION * total))  # what fit's scheduler uses for one epoch of TOTAL steps
    spec = parse_spec({
        "name": "bench-causal-lm", "task": "chat",
        "model": {"base": "random-init", "method": "lora",
                  "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "target_modules": "all-linear"}},
        "data": {"train": "synthetic", "max_length": plan["max_len"]},
        "training": {"epochs": 1, "learning_rate": LR, "batch_size": plan["batch"], "warmup": WARMUP_FRACTION,
                     "weight_decay": WEIGHT_DECAY, "max_grad_norm": 1.0, "early_stopping_patience": None,
                     "batching": "padding-free", "seed": a.seed},
        "evaluation": {"baseline": False, "generation": {"prompts": 0}}})
    peak_flops = matmul_peak(device)
    print(f"measured matmul peak: {peak_flops / 1e12:.3f} TFLOP/s ({'bf16' if device == 'cuda' else 'fp32'})",
          flush=True)
    n_eff = sum(x * x for x in lengths) / sum(lengths)
    fpt = flops_per_token(cfg, n_eff, lora=True)

    memory = PeakMemory(device)
    runs: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    leak = None
    with tempfile.TemporaryDirectory(prefix="tunelab_bench_lm_") as tmp_name:
        ctx = {"device": device, "plan": plan, "cfg": cfg, "dtype": dtype, "seed": a.seed,
               "pad_id": task.tokenizer.pad_token_id, "total": total, "warmup_lr_steps": warmup_lr_steps,
               "hf_ordered": hf_ordered, "encoded": encoded, "task": task, "spec": spec, "memory": memory,
               "tmp": Path(tmp_name), "machine": machine}
        if not a.no_leak_check:
            leak = leak_control(ctx, batches[0])
            print("leak control:", json.dumps(leak), flush=True)
            gc.collect()
        for round_ in range(a.repeats):
            for arm in (arms if round_ % 2 == 0 else arms[::-1]):
                if arm in failures:
                    continue
                if arm == "hf_tuned" and not machine["liger_kernel"] and "hf_flat" in arms:
                    if round_ == 0:
                        print("hf_tuned: skipped, liger_kernel not importable, so it would repeat hf_flat", flush=True)
                    continue
                memory.reset()
                started = time.perf_counter()
                try:
                    r = run_tunelab(ctx) if arm == "tunelab" else run_hf(arm, ctx)
                except Exception as err:  # e.g. CUDA out of memory on the padded arm: record it and go on
                    failures[arm] = f"{type(err).__name__}: {str(err)[:300]}"
                    print(f"{arm}: FAILED {failures[arm]}", flush=True)
                    continue
                finally:
                    memory.stop()
                    gc.collect()
                runs.setdefault(arm, []).append(r)
                span = r["times"][-1] - r["times"][plan["warmup"] - 1]
                real = sum(s["real"] for s in r["per_step"][plan["warmup"]:])
                print(f"{arm} (round {round_ + 1}): {real / span:,.0f} real tok/s over {plan['steps']} steps "
                      f"({span:.1f} s; arm wall {time.perf_counter() - started:.1f} s), "
                      f"peak {gib(r['peak_bytes'])} GiB, final loss {r['per_step'][-1]['loss']:.4f}", flush=True)

    results = {arm: summarise(arm, rs, plan["warmup"], total, fpt, peak_flops) for arm, rs in runs.items()}
    # ratios, same batches and weights, loss agreement
    ref = results.get("hf_plain")
    for s in results.values():
        if not ref:
            break
        s["ratio_vs_hf_plain"] = s["real_tokens_per_s"] / ref["real_tokens_per_s"]
        s["same_initial_weights_as_hf_plain"] = s["weights_checksum"] == ref["weights_checksum"]
        if s["arm"] == "hf_plain":
            continue
        if s["order"] == "shared":
            s["same_batches_as_hf_plain"] = s["batch_fingerprint"] == ref["batch_fingerprint"]
            s["median_step_speedup_vs_hf_plain"] = statistics.median(
                x / y for x, y in zip(ref["step_seconds"], s["step_seconds"]))
            diffs = [abs(x - y) for x, y in zip(s["losses"], ref["losses"])]
            s["max_abs_loss_diff_vs_hf_plain"] = max(diffs)
            s["loss_agrees"] = max(diffs) < tolerance
        else:
            s["max_abs_loss_diff_vs_hf_plain"] = "n/a (own batch order)"
    summary = list(results.values())
    md = table(summary, device)
    print()
    print(md)
    ratios = {}
    if ref:
        ratios = {f"{s['arm']}_over_hf_plain": s["ratio_vs_hf_plain"] for s in summary if s["arm"] != "hf_plain"}
    for arm in ("hf_flat", "hf_tuned"):
        if "tunelab" in results and arm in results:
            ratios[f"tunelab_over_{arm}"] = results["tunelab"]["real_tokens_per_s"] / results[arm]["real_tokens_per_s"]
    print("\nratios (real tokens/s):", ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    target = None
    if shape == "tiny" and "tunelab_over_hf_plain" in ratios:
        target = {"goal": "tunelab >= 2x hf_plain real tokens/s on the CPU", "ratio": ratios["tunelab_over_hf_plain"],
                  "met": ratios["tunelab_over_hf_plain"] >= 2.0}
        print(f"CPU target (tunelab >= 2x hf_plain): {'met' if target['met'] else 'NOT met'} ({target['ratio']:.2f}x)")
    agree = {s["arm"]: s["loss_agrees"] for s in summary if "loss_agrees" in s}
    print(f"loss curves agree with hf_plain (max abs diff < {tolerance:g}): {agree}")
    print("same batches as hf_plain:", {s["arm"]: s["same_batches_as_hf_plain"] for s in summary
                                        if "same_batches_as_hf_plain" in s})
    print("same initial weights as hf_plain:", {s["arm"]: s["same_initial_weights_as_hf_plain"] for s in summary
                                                if "same_initial_weights_as_hf_plain" in s})
    if failures:
        print("failed arms:", failures)

    out = a.json_out
    if out is None and device == "cpu" and not a.smoke and shape == "tiny" and a.arms is None:
        out = str(ROOT / "benchmarks/results/causal_lm_cpu.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        model_facts = {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                     "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                     "tie_word_embeddings")}
        machine["load_average_at_end"] = list(os.getloadavg())
        Path(out).write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "machine": machine,
            "shape": shape, "smoke": a.smoke, "model": model_facts, "dtype": str(dtype).replace("torch.", ""),
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "target_modules": "all-linear"},
            "optimizer": {"lr": LR, "weight_decay": WEIGHT_DECAY, "warmup_steps": warmup_lr_steps, "schedule": "linear",
                          "max_grad_norm": 1.0, "optim": "AdamW fused"},
            "data": data, "matmul_peak_flops": peak_flops, "flops_per_real_token": fpt, "n_eff": n_eff,
            "memory_method": memory.method, "loss_tolerance": tolerance, "leak_control": leak, "ratios": ratios,
            "cpu_target": target, "failures": failures, "results": summary, "markdown": md}, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
