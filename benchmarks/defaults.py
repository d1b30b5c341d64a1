"""Learning-rate and class-weight defaults, judged on shared data nobody tuned them on.

What: for each data set, the bundled MiniLM (6 layers, hidden 384) fine-tuned by tunelab with the same budget
(3 epochs, batch 16, max_length 128, seed 0) at a grid of learning rates per method, so the table shows the
old defaults (full 2e-5, LoRA 2e-4: BERT-base / LLM conventions), the new size-aware defaults
(tunelab.auto.defaults) and their neighbours side by side; and, on the imbalanced set, class weights off vs
on at the new default. Every arm is an ordinary tunelab run (its own split of the same rows, same seed), and
the headline is validation-selected test macro-F1 plus the minority class's test F1.

Data (../shared/datasets, not shipped with the project):
  fpb       Financial PhraseBank AllAgree, 3-class sentiment (2,264 rows; neutral 61%, negative 13%)
  unfair    CLAUDETTE unfair ToS clauses, binary fair/unfair, a 3,000-sentence random sample (unfair ~8%:
            the data doctor reports class imbalance, so class weights turn on by default)
  amazon    Amazon reviews binary sentiment, 2,000 random train reviews (balanced)

Run:  python benchmarks/defaults.py [--sets fpb,unfair] [--arms lr,weights] [--out benchmarks/results/defaults.json]
(the development run: `--sets fpb --arms lr`, then `--sets unfair --arms weights`; the shared data sets are looked
for in ../shared/datasets, or where TUNELAB_SHARED_DATASETS points)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from shared_sets import machine, read_set, write_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LR_GRID = {"full": (2e-5, 5e-5, 1e-4), "lora": (2e-4, 5e-4, 1e-3)}  # old default, between, new default (narrow)
DEFAULT_NARROW = {"full": 1e-4, "lora": 1e-3}  # what tunelab chooses for MiniLM (hidden 384)


def load_set(name: str, folder: Path) -> tuple[str, str]:
    """(csv path, minority label) of one shared set, written as text,label (unfair and amazon: a seeded sample)."""
    rng = random.Random(0)
    rows = read_set(name)
    if name == "unfair":
        rows = rng.sample(rows, 3000)
    elif name == "amazon":
        rows = rng.sample(rows, 2000)
    return write_csv(rows, folder / f"{name}.csv"), {"fpb": "negative", "unfair": "unfair", "amazon": "0"}[name]


def run_arm(data: str, minority: str, method: str, lr: float | None, weights: str | None, out: Path,
            name: str) -> dict[str, Any]:
    from tunelab import fine_tune
    from tunelab.spec import parse_spec

    training: dict[str, Any] = {"epochs": 3, "batch_size": 16, "seed": 0}
    if lr is not None:
        training["learning_rate"] = lr
    if weights is not None:
        training["class_weights"] = weights
    spec = parse_spec({"name": name, "task": "text-classification", "model": {"base": "minilm", "method": method},
                       "data": {"train": data, "max_length": 128, "split": {"validation": 0.15, "test": 0.25}},
                       "training": training, "output": {"dir": str(out)}})
    t0 = time.time()
    run = fine_tune(spec, overwrite=True, force=True)
    seconds = time.time() - t0
    evaluation = json.loads((run.dir / "evaluation.json").read_text())
    test = evaluation["fine_tuned"]["test"]
    resolved = json.loads((run.dir / "run.json").read_text())
    return {"method": method, "learning_rate": lr, "class_weights": weights,
            "chosen": evaluation.get("defaults", {}), "status": resolved["status"],
            "val_macro_f1": evaluation["fine_tuned"]["validation"]["macro_f1"], "test_macro_f1": test["macro_f1"],
            "test_minority_f1": test["per_class"][minority]["f1"],
            "baseline_test_macro_f1": evaluation.get("baseline", {}).get("test", {}).get("macro_f1"),
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fpb,unfair")
    ap.add_argument("--arms", default="lr,weights", help="lr: the learning-rate grid; weights: class weights off/on")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--out", default="benchmarks/results/defaults.json")
    ap.add_argument("--rates", default=None, help="only these learning rates of the grid, e.g. 2e-4,1e-3")
    args = ap.parse_args()
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for set_name in args.sets.split(","):
            data, minority = load_set(set_name, folder)
            rows = results.setdefault(set_name, [])
            arms: list[tuple[str, float | None, str | None]] = []
            if "lr" in args.arms:
                keep = {float(x) for x in args.rates.split(",")} if args.rates else None
                arms += [(m, lr, "none") for m in args.methods.split(",") for lr in LR_GRID[m]
                         if keep is None or lr in keep]
            if "weights" in args.arms:  # at the default learning rate: weights off, then on
                arms += [(m, None, w) for m in args.methods.split(",") for w in ("none", "auto")
                         if not (w == "none" and "lr" in args.arms and LR_GRID[m][-1] == DEFAULT_NARROW[m])]
            for method, lr, weights in arms:
                row = run_arm(data, minority, method, lr, weights, folder / "runs", f"{set_name}-{method}")
                row = {"set": set_name, **row}
                print(json.dumps(row), flush=True)
                rows[:] = [r for r in rows if (r["method"], r["learning_rate"], r["class_weights"])
                           != (method, lr, weights)] + [row]
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
