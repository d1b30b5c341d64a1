"""`tunelab auto` with a 20-minute budget on this machine, against the best hand-tuned result.

What: the same data as benchmarks/search.py (a stratified 1,000-row sample of Financial PhraseBank AllAgree,
max_length 64, tunelab's seed-0 split 50/20/30), the bundled MiniLM. `auto` climbs zero-shot -> SetFit ->
LoRA -> full within the budget and picks its winner on validation; the winner's test macro-F1 is compared
with the hand-tuned reference: the grid of benchmarks/search.py (36 configurations of learning rate, epochs
and batch size, the one with the best validation macro-F1), read from benchmarks/results/search.json when it
is there.

Run:  python benchmarks/ladder.py [--budget 20m] [--out benchmarks/results/ladder.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from shared_sets import machine, read_set, write_csv

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="20m")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/ladder.json")
    ap.add_argument("--reference", default="benchmarks/results/search.json")
    args = ap.parse_args()
    from tunelab.auto.ladder import auto
    from tunelab.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_csv(read_set("fpb"), folder / "fpb.csv")
        spec = parse_spec({"name": "fpb-auto", "task": "text-classification", "model": {"base": "minilm"},
                           "data": {"train": str(data), "limit": args.rows, "max_length": 64,
                                    "split": {"validation": 0.2, "test": 0.3}},
                           "training": {"seed": 0}, "output": {"dir": str(folder / "runs")}})
        t0 = time.time()
        result = auto(spec, args.budget)
        wall = time.time() - t0
        rows = []
        for row in result.rungs:
            entry: dict[str, Any] = {k: getattr(row, k) for k in ("rung", "kind", "method", "status", "metric", "gain",
                                                                  "seconds", "energy_kwh", "co2_kg", "why")}
            if row.run_dir and (Path(row.run_dir) / "metrics.json").is_file():
                metrics = json.loads((Path(row.run_dir) / "metrics.json").read_text())
                baseline = metrics.get("baseline", {}).get("test", {}).get("macro_f1")
                # the zero-shot rung is the baseline inside the first trained rung's run: its test score is that
                entry["test_macro_f1"] = baseline if row.kind == "baseline" else metrics["fine_tuned"]["test"]["macro_f1"]
                entry["baseline_test_macro_f1"] = baseline
            entry["trials"] = [{k: t.get(k) for k in ("name", "learning_rate", "metric", "status", "seconds")}
                               for t in row.trials]
            rows.append(entry)
    winner = next((r for r in rows if result.winner and r["rung"] == result.winner.rung), None)
    reference = None
    ref_path = Path(args.reference)
    if ref_path.is_file():
        grid = json.loads(ref_path.read_text()).get("grid")
        if grid:
            reference = {"selected": grid["selected"], "grid_seconds": grid["seconds"]}
    out = {"machine": machine(),
           "budget": args.budget, "wall_seconds": round(wall, 1), "rungs": rows, "verdict": result.verdict,
           "winner": winner, "hand_tuned": reference}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"winner": winner, "hand_tuned": reference, "wall_seconds": out["wall_seconds"]}, default=str))


if __name__ == "__main__":
    main()
