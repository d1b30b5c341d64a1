"""`tunelab tune` (20 Optuna trials, pruning) against a full grid of 36 configurations, on Financial PhraseBank.

What: the bundled MiniLM, full fine-tuning, on a stratified 1,000-row sample of Financial PhraseBank AllAgree
(max_length 64; the split tunelab makes with seed 0: 50% train, 20% validation, 30% test, the same rows for
every run). The grid: learning rate {2e-5, 5e-5, 1e-4, 2e-4} x epochs {2, 3, 4} x batch size {8, 16, 32} =
36 runs, each an ordinary `fine_tune`; its result is the test macro-F1 of the configuration with the best
validation macro-F1. The search: `tune` with 20 trials over the same space (learning rate log-uniform on
[2e-5, 2e-4], the same epoch and batch choices; warmup and weight decay fixed), median pruning on the
per-epoch validation metric, its winner scored on test once. Compute: training examples processed (epochs
reached x training rows, summed over the arm's runs: what the arm costs on any machine, whatever else ran
beside it), and the summed wall seconds and energy records of its runs in one process on this machine.

The issue's target: the search's validation-selected test macro-F1 within 1 point of the grid's, at no more
than a third of the grid's compute.

Run:  python benchmarks/search.py [--out benchmarks/results/search.json] [--rows 1000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from shared_sets import machine, read_set, write_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GRID = {"learning_rate": (2e-5, 5e-5, 1e-4, 2e-4), "epochs": (2, 3, 4), "batch_size": (8, 16, 32)}


def base_spec(data: str, out: Path, rows: int) -> dict[str, Any]:
    return {"name": "fpb", "task": "text-classification", "model": {"base": "minilm", "method": "full"},
            "data": {"train": data, "limit": rows, "max_length": 64, "split": {"validation": 0.2, "test": 0.3}},
            "training": {"seed": 0, "early_stopping_patience": None},
            "search": {"trials": 20, "space": {"learning_rate": {"low": 2e-5, "high": 2e-4, "log": True},
                                               "epochs": {"choices": list(GRID["epochs"])},
                                               "batch_size": {"choices": list(GRID["batch_size"])},
                                               "warmup": None, "weight_decay": None}},
            "output": {"dir": str(out)}}


def run_grid(spec_data: dict[str, Any], out: Path) -> dict[str, Any]:
    from tunelab import fine_tune
    from tunelab.spec import parse_spec

    rows = []
    for lr, epochs, batch in itertools.product(*GRID.values()):
        data = json.loads(json.dumps(spec_data))
        data["name"] = f"grid-{lr:g}-{epochs}-{batch}"
        data["training"].update(learning_rate=lr, epochs=epochs, batch_size=batch)
        data["output"]["dir"] = str(out / "grid")
        t0 = time.time()
        run = fine_tune(parse_spec(data), overwrite=True)
        seconds = time.time() - t0
        metrics = json.loads((run.dir / "metrics.json").read_text())["fine_tuned"]
        energy = json.loads((run.dir / "run.json").read_text()).get("energy", {})
        rows.append({"learning_rate": lr, "epochs": epochs, "batch_size": batch, "seconds": round(seconds, 1),
                     "val_macro_f1": metrics["validation"]["macro_f1"], "test_macro_f1": metrics["test"]["macro_f1"],
                     "energy_kwh": energy.get("energy_kwh")})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(run.dir / "checkpoints", ignore_errors=True)
    best = max(rows, key=lambda r: r["val_macro_f1"])
    return {"runs": rows, "selected": best, "seconds": round(sum(r["seconds"] for r in rows), 1),
            "train_examples": sum(r["epochs"] for r in rows) * train_rows(spec_data),
            "energy_kwh": sum(r["energy_kwh"] or 0 for r in rows),
            "best_test_any": max(r["test_macro_f1"] for r in rows)}


def run_search(spec_data: dict[str, Any], out: Path) -> dict[str, Any]:
    from tunelab.auto.tune import tune
    from tunelab.spec import parse_spec

    data = json.loads(json.dumps(spec_data))
    data["output"]["dir"] = str(out / "search")
    t0 = time.time()
    result = tune(parse_spec(data), trials=20)
    wall = time.time() - t0
    report = result.report
    trial_seconds = sum(r["seconds"] or 0 for r in report["trials"])
    winner = report["winner"] or {}
    test = (winner.get("test") or {}).get("fine_tuned") or {}
    return {"trials": report["trials"], "states": report["states"], "winner": winner,
            "test_macro_f1": test.get("macro_f1"), "val_macro_f1": winner.get("validation"),
            "seconds": round(trial_seconds, 1), "wall_seconds": round(wall, 1),
            "energy_kwh": report["energy"]["energy_kwh"],
            "train_examples": sum((r["epochs"] or 0) for r in report["trials"]) * train_rows(spec_data)}


def train_rows(spec_data: dict[str, Any]) -> int:
    """Training rows of the split every run uses (data.limit minus the validation and test shares)."""
    split = spec_data["data"]["split"]
    limit = spec_data["data"]["limit"]
    return limit - round(limit * split["validation"]) - round(limit * split["test"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/search.json")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--arms", default="search,grid")
    args = ap.parse_args()
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_csv(read_set("fpb"), folder / "fpb.csv")
        spec_data = base_spec(str(data), folder, args.rows)
        for arm in args.arms.split(","):
            results[arm] = run_search(spec_data, folder) if arm == "search" else run_grid(spec_data, folder)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1))
    if "search" in results and "grid" in results:
        s, g = results["search"], results["grid"]
        results["summary"] = {"search_test": s["test_macro_f1"], "grid_selected_test": g["selected"]["test_macro_f1"],
                              "gap_points": round(100 * (g["selected"]["test_macro_f1"] - s["test_macro_f1"]), 2),
                              "compute_ratio": round(s["train_examples"] / g["train_examples"], 3),
                              "seconds_ratio": round(s["seconds"] / g["seconds"], 3)}
        out_path.write_text(json.dumps(results, indent=1))
        print(json.dumps(results["summary"]))


if __name__ == "__main__":
    main()
