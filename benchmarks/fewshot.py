"""Few-shot: SetFit vs the zero-shot baseline vs plain fine-tuning at 8, 16 and 32 examples per class.

What: the bundled MiniLM (a sentence encoder) on three shared sets. For each set and seed, a fixed validation
set (40 per class) and test set (100 per class) are drawn first; then for N in {8, 16, 32} the first N per
class of a seeded shuffle of the remaining rows form the training set (so the 8 are inside the 16 and the 32).
Arms, all through tunelab's `fine_tune` with max_length 64:
  zero-shot  the run's own untuned baseline: each text gets the label whose name (in evaluation's zero-shot
             template) the frozen encoder embeds nearest; it sees no training example, so it is the same for
             every N
  setfit     model.method setfit, its defaults (20 pair iterations, one body epoch, logistic head)
  full       plain fine-tuning at tunelab's defaults for the model (learning rate by width: 1e-4), 10 epochs
             with early stopping on validation (3 epochs would be 3-6 optimiser steps at these sizes)
The headline is test macro-F1, mean and standard deviation over 3 seeds.

Sets (../shared/datasets, not shipped): fpb (Financial PhraseBank AllAgree, 3 classes), amazon (Amazon
reviews, 2), unfair (CLAUDETTE ToS sentences, fair vs unfair).

Run:  python benchmarks/fewshot.py [--sets fpb,amazon,unfair] [--shots 8,16,32] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from shared_sets import machine, read_set, write_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VAL_PER_CLASS, TEST_PER_CLASS = 40, 100


def draw(rows: list[tuple[str, str]], seed: int, shots: list[int], folder: Path) -> dict[str, str]:
    """Files for one seed: validation, test, and train_N for each N (nested), no text in two of them."""
    rng = random.Random(seed)
    seen, by_label = set(), defaultdict(list)
    for text, label in rows:
        if text and text not in seen:
            seen.add(text)
            by_label[label].append((text, label))
    files: dict[str, str] = {}
    val, test, rest = [], [], {}
    for label, items in sorted(by_label.items()):
        items = items[:]
        rng.shuffle(items)
        val += items[:VAL_PER_CLASS]
        test += items[VAL_PER_CLASS:VAL_PER_CLASS + TEST_PER_CLASS]
        rest[label] = items[VAL_PER_CLASS + TEST_PER_CLASS:]
    files["validation"] = write_csv(val, folder / f"val-{seed}.csv")
    files["test"] = write_csv(test, folder / f"test-{seed}.csv")
    for n in shots:
        files[f"train_{n}"] = write_csv([r for items in rest.values() for r in items[:n]], folder / f"train-{seed}-{n}.csv")
    return files


def run(files: dict[str, str], n: int, seed: int, method: str, out: Path, name: str) -> dict[str, Any]:
    from tunelab import fine_tune
    from tunelab.spec import parse_spec

    training: dict[str, Any] = {"seed": seed}
    if method == "full":
        training.update(epochs=10, batch_size=8)
    spec = parse_spec({"name": name, "task": "text-classification", "model": {"base": "minilm", "method": method},
                       "data": {"train": files[f"train_{n}"], "validation": files["validation"],
                                "test": files["test"], "max_length": 64},
                       "training": training, "output": {"dir": str(out)}})
    result = fine_tune(spec, overwrite=True, force=True)
    metrics = json.loads((result.dir / "metrics.json").read_text())
    run_json = json.loads((result.dir / "run.json").read_text())
    return {"zero_shot": metrics["baseline"]["test"]["macro_f1"], method: metrics["fine_tuned"]["test"]["macro_f1"],
            f"{method}_seconds": round(run_json["finished"] - run_json["started"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fpb,amazon,unfair")
    ap.add_argument("--shots", default="8,16,32")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="setfit,full")
    ap.add_argument("--out", default="benchmarks/results/fewshot.json")
    args = ap.parse_args()
    shots = [int(x) for x in args.shots.split(",")]
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for set_name in args.sets.split(","):
            rows = read_set(set_name)
            for seed in (int(s) for s in args.seeds.split(",")):
                files = draw(rows, seed, shots, folder)
                for n in shots:
                    row: dict[str, Any] = {"set": set_name, "n_per_class": n, "seed": seed}
                    for method in args.methods.split(","):
                        row.update(run(files, n, seed, method, folder / "runs", f"{set_name}-{n}-{seed}-{method}"))
                    print(json.dumps(row), flush=True)
                    results["rows"] = [r for r in results["rows"]
                                       if (r["set"], r["n_per_class"], r["seed"]) != (set_name, n, seed)] + [row]
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    out_path.write_text(json.dumps(results, indent=1))
    table = defaultdict(lambda: defaultdict(list))
    for r in results["rows"]:
        for arm in ("zero_shot", "setfit", "full"):
            if arm in r:
                table[(r["set"], r["n_per_class"])][arm].append(r[arm])
    results["summary"] = [{"set": s, "n_per_class": n, **{arm: {"mean": round(statistics.mean(v), 4),
                                                                 "std": round(statistics.pstdev(v), 4), "seeds": len(v)}
                                                          for arm, v in arms.items()}}
                          for (s, n), arms in sorted(table.items())]
    out_path.write_text(json.dumps(results, indent=1))
    for row in results["summary"]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
