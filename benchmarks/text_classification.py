"""tunelab vs plain Hugging Face Trainer: fine-tune the bundled MiniLM on Financial PhraseBank (AllAgree).

What: four arms on the same model, rows, epochs, batch size 16, lr 5e-5, 10% warmup and seed, in one process:
  hf_tutorial        HF Trainer, every example padded to 512 tokens (the common tutorial recipe)
  hf_tuned           HF Trainer, DataCollatorWithPadding + group-by-length sampling (a well-tuned HF user)
  hf_dynamic_random  HF Trainer, DataCollatorWithPadding, random order
  tunelab            tunelab.recipes.fine_tune: dynamic padding + length-mixed batches, validation each epoch
Why: to show the speed of dynamic padding without the quality loss that plain length grouping can cause
when length follows the label (see /work/shared/bench/README.md), measured over several seeds.

Data: the reference split of /work/shared/bench/hf_trainer_textcls_cpu.py (rows shuffled with
random.Random(0), first 20% test: 452 test / 1,812 train). tunelab scores a validation split each epoch, so
for each seed 10% of the 1,812 is carved off (stratified, sklearn train_test_split, random_state=seed) and
given to tunelab as data.validation; every arm, HF and tunelab, trains on exactly the remaining rows. The
test rows are never seen in training or model selection. The HF arms never look at the validation rows.

Timing: HF arms time trainer.train() only. The tunelab headline is the whole fine_tune() call (read and
check data, tokenise, train, score validation each epoch, write checkpoints, score validation and test,
save the model, report and card); its `fit` time (training plus per-epoch validation scoring and
checkpoint writes) is reported beside it. Differences beyond batching: HF Trainer default weight decay 0.0
vs tunelab 0.01; with --epochs > 1 tunelab restores its best validation epoch, HF keeps the last.

--tutorial-steps N trains the tutorial arm for N steps only and extrapolates its time to the full run as
(time / N) * total steps (marked "extrapolated", no quality). The tutorial arm runs on the first seed only
(its time does not depend on the seed); without --tutorial-steps it runs in full (~2,200 s on 2 CPU cores), and its quality is that one seed's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared/datasets/financial_phrasebank/fpb_allagree.csv")
ARMS = ("hf_tutorial", "hf_tuned", "hf_dynamic_random", "tunelab")
BATCH, LR, WARMUP, MAX_LEN = 16, 5e-5, 0.1, 512


def load_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"sentence", "label"} <= set(reader.fieldnames or []):
            sys.exit(f"{path}: expected columns sentence,label, got {reader.fieldnames}")
        return [{"sentence": r["sentence"], "label": r["label"]} for r in reader]


def write_csv(rows: list[dict[str, str]], path: Path) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["sentence", "label"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def stratified(rows: list[dict[str, str]], size: float | int, seed: int) -> tuple[list, list]:
    """(rest, held): held is SIZE rows (a share or a count), stratified by label."""
    from sklearn.model_selection import train_test_split

    return train_test_split(rows, test_size=size, random_state=seed, stratify=[r["label"] for r in rows])


def group_kw(on: bool) -> dict[str, Any]:
    """Length grouping on or off, for transformers 4 (group_by_length) and 5 (train_sampling_strategy)."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def run_hf(arm: str, model_dir: str, train: list, test: list, labels: list[str], seed: int, epochs: int,
           max_steps: int | None, tmp: Path) -> dict[str, Any]:
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(model_dir)
    lid = {lab: i for i, lab in enumerate(labels)}
    pad = "max_length" if arm == "hf_tutorial" else False

    def encode(rs: list) -> list[dict[str, Any]]:
        enc = tok([r["sentence"] for r in rs], truncation=True, padding=pad, max_length=MAX_LEN)
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "labels": lid[r["label"]]} for i, r in enumerate(rs)]

    tr, te = encode(train), encode(test)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    args = TrainingArguments(output_dir=str(tmp / f"hf_{arm}_{seed}"), per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=64, num_train_epochs=epochs, max_steps=max_steps or -1,
                             learning_rate=LR, warmup_steps=WARMUP, save_strategy="no", report_to=[],
                             logging_steps=10_000, disable_tqdm=True, seed=seed, **group_kw(arm == "hf_tuned"))
    trainer = Trainer(model=model, args=args, train_dataset=tr, data_collator=DataCollatorWithPadding(tok))
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    total_steps = math.ceil(len(tr) / BATCH) * epochs
    out: dict[str, Any] = {"train_s": train_s, "steps": trainer.state.global_step, "total_steps": total_steps}
    if max_steps:  # partial tutorial run: time extrapolated, no quality
        out.update(train_s=train_s / max_steps * total_steps, measured_s=train_s, extrapolated=True,
                   quality="none (partial run)", accuracy=None, macro_f1=None)
    else:
        t = time.perf_counter()
        pred = trainer.predict(te).predictions.argmax(-1)
        out["predict_s"] = time.perf_counter() - t  # test scoring, not in train_s (tunelab's wall includes it)
        y = [x["labels"] for x in te]
        out.update(accuracy=float(accuracy_score(y, pred)), macro_f1=float(f1_score(y, pred, average="macro")),
                   quality="full")
    del trainer, model, tr, te
    gc.collect()
    return out


def run_tunelab(train_csv: str, val_csv: str, test_csv: str, seed: int, epochs: int, tmp: Path) -> dict[str, Any]:
    import tunelab.recipes as recipe
    from tunelab.spec import parse_spec

    spec = parse_spec({
        "name": f"bench-seed{seed}", "task": "text-classification", "model": {"base": "all-MiniLM-L6-v2"},
        "data": {"train": train_csv, "validation": val_csv, "test": test_csv, "text_column": "sentence",
                 "label_column": "label", "max_length": MAX_LEN},
        "training": {"epochs": epochs, "learning_rate": LR, "batch_size": BATCH, "warmup": WARMUP, "seed": seed,
                     "early_stopping_patience": None},
        "evaluation": {"baseline": False}, "output": {"dir": str(tmp / "tunelab_runs")}})
    t = time.perf_counter()
    # force: the reference split has 2 test rows that repeat train rows (tunelab's leakage check stops on
    # them); every arm must see the same rows, so they stay, as they do for the HF arms.
    run = recipe.fine_tune(spec, overwrite=True, force=True)
    call_s = time.perf_counter() - t
    test = run.metrics["fine_tuned"]["test"]
    history = run.state.history
    out = {"train_s": sum(h["train_seconds"] for h in history), "val_s": sum(h["val_seconds"] for h in history),
           "call_s": call_s, "steps": run.state.global_step, "best_epoch": run.state.best_epoch,
           "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "quality": "full",
           "timing": "train_s: training steps only (like trainer.train()); call_s: the whole fine_tune call "
                     "(read, check, tokenise, train, validate each epoch, checkpoint, score test, save, report)"}
    del run
    gc.collect()
    return out


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)  # no spread from one seed


def summarise(results: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        q = [r for r in rs if r.get("macro_f1") is not None]
        s, sd = mean_std([r["train_s"] for r in rs])
        summary[arm] = {"seconds_mean": s, "seconds_std": sd, "n_seeds": len(rs), "n_quality_seeds": len(q),
                        "extrapolated": any(r.get("extrapolated") for r in rs),
                        "macro_f1_mean": mean_std([r["macro_f1"] for r in q])[0],
                        "macro_f1_std": mean_std([r["macro_f1"] for r in q])[1],
                        "accuracy_mean": mean_std([r["accuracy"] for r in q])[0]}
        if arm == "tunelab":
            summary[arm]["call_seconds_mean"] = mean_std([r["call_s"] for r in rs])[0]
    secs = {a: v["seconds_mean"] for a, v in summary.items()}
    ratios = {}
    if "tunelab" in secs and "hf_tuned" in secs:
        ratios["tunelab_over_hf_tuned"] = secs["tunelab"] / secs["hf_tuned"]
        ratios["tunelab_whole_call_over_hf_tuned"] = summary["tunelab"]["call_seconds_mean"] / secs["hf_tuned"]
    if "tunelab" in secs and "hf_dynamic_random" in secs:
        ratios["tunelab_over_hf_dynamic_random"] = secs["tunelab"] / secs["hf_dynamic_random"]
    if "tunelab" in secs and "hf_tutorial" in secs:
        ratios["hf_tutorial_over_tunelab_speedup"] = secs["hf_tutorial"] / secs["tunelab"]
    return {"arms": summary, "ratios": ratios}


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(summary: dict[str, Any], machine: dict[str, Any], n_train: int, n_test: int, epochs: int) -> str:
    lines = [f"Bundled MiniLM, Financial PhraseBank AllAgree ({n_train} train / {n_test} test), {epochs} epoch(s), "
             f"batch {BATCH}, lr {LR:g}; {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
             f"torch {machine['torch']}, transformers {machine['transformers']}.", "",
             "| arm | wall s (mean ± std) | seeds | test macro-F1 | test accuracy |", "|---|---|---|---|---|"]
    for arm, v in summary["arms"].items():
        secs = f"{fmt(v['seconds_mean'], ',.1f')} ± {fmt(v['seconds_std'], '.1f')}"
        if v["extrapolated"]:
            secs += " (extrapolated)"
        if arm == "tunelab":
            secs += f" (whole fine_tune call {fmt(v.get('call_seconds_mean'), ',.1f')})"
        f1 = f"{fmt(v['macro_f1_mean'])} ± {fmt(v['macro_f1_std'])}" if v["n_quality_seeds"] else "–"
        seeds = f"{v['n_seeds']}" + (f" ({v['n_quality_seeds']} scored)" if v["n_quality_seeds"] != v["n_seeds"] else "")
        lines.append(f"| {arm} | {secs} | {seeds} | {f1} | {fmt(v['accuracy_mean'])} |")
    if summary["ratios"]:
        lines += ["", "; ".join(f"{k}: {v:.2f}x" for k, v in summary["ratios"].items())]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="sentence,label CSV (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--tutorial-steps", type=int, default=None, help="train hf_tutorial N steps, extrapolate time")
    p.add_argument("--limit", type=int, default=None, help="stratified sample of N training rows (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's)")
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    if bad := [x for x in arms if x not in ARMS]:
        p.error(f"unknown arm(s) {bad}; choose from {ARMS}")
    seeds = [int(s) for s in a.seeds.split(",")]
    if not Path(a.data).is_file():
        print(f"skipping: data file {a.data} not found (pass --data PATH to a sentence,label CSV)")
        return 0

    import torch
    import transformers
    from tunelab import catalog

    transformers.logging.set_verbosity_error()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model_dir = catalog.resolve("all-MiniLM-L6-v2")
    except catalog.ModelNotFound as err:
        print(f"skipping: {err}")
        return 0
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "transformers": transformers.__version__}
    print("machine:", json.dumps(machine), flush=True)

    rows = load_rows(a.data)
    labels = sorted({r["label"] for r in rows})
    random.Random(0).shuffle(rows)
    n_test = len(rows) // 5
    test, pool = rows[:n_test], rows[n_test:]
    if a.limit and a.limit < len(pool):
        pool = stratified(pool, len(pool) - a.limit, 0)[0]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tunelab_bench_") as tmp_name:
        tmp = Path(tmp_name)
        test_csv = write_csv(test, tmp / "test.csv")
        for seed in seeds:
            train, val = stratified(pool, 0.1, seed)
            train_csv, val_csv = write_csv(train, tmp / f"train{seed}.csv"), write_csv(val, tmp / f"val{seed}.csv")
            for arm in arms:
                if arm == "hf_tutorial" and seed != seeds[0]:
                    continue  # ~2,200 s per full run on 2 cores, and its time does not depend on the seed

                if arm == "tunelab":
                    r = run_tunelab(train_csv, val_csv, test_csv, seed, a.epochs, tmp)
                else:
                    steps = a.tutorial_steps if arm == "hf_tutorial" else None
                    r = run_hf(arm, model_dir, train, test, labels, seed, a.epochs, steps, tmp)
                r = {"arm": arm, "seed": seed, "n_train": len(train), "n_validation": len(val), "n_test": len(test),
                     "epochs": a.epochs, **r}
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = summarise(results, arms)
    print("\nsummary:")
    for arm, v in summary["arms"].items():
        ext = " (extrapolated)" if v["extrapolated"] else ""
        fit = f"  [whole call {fmt(v.get('call_seconds_mean'), '.1f')} s]" if arm == "tunelab" else ""
        print(f"  {arm:<18} {fmt(v['seconds_mean'], '9.1f')} ± {fmt(v['seconds_std'], '.1f')} s{ext}{fit}  "
              f"macro-F1 {fmt(v['macro_f1_mean'])}  acc {fmt(v['accuracy_mean'])}  "
              f"seeds {v['n_seeds']} (scored {v['n_quality_seeds']})")
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v:.2f}x")
    print("  (HF: trainer.train() only; tunelab: the whole fine_tune call, fit = training + per-epoch validation)")
    md = markdown(summary, machine, results[0]["n_train"] if results else 0, len(test), a.epochs)
    print("\nmarkdown for docs/benchmarks.md:\n\n" + md)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"machine": machine, "args": vars(a), "results": results,
                                                "summary": summary, "markdown": md}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
