"""Every registered doctor check on 10k, 100k and 1M short texts: the time each takes and peak memory.

What: the synthetic train/validation/test splits of benchmarks/doctor_scaling.py (Zipfian words, 8-30 per
text, 2% exact and 2% near copies), with their `location` column, the bundled MiniLM tokenizer
with max_length 32 so the token-length check has truncation to count, and then `run_checks` as a training
run calls it: each registered check timed on its own. Each size runs in a fresh subprocess so ru_maxrss is
that size's peak. Target (issue "dataset doctor"): 1M texts through every text check in under 5 minutes,
peak memory under 4 GB, on 2 cores.

Run: .venv/bin/python benchmarks/doctor_all_checks.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def worker(n: int) -> dict[str, Any]:
    from doctor_scaling import synthetic
    from transformers import AutoTokenizer

    from tunelab.catalog import resolve
    from tunelab.data.doctor import CHECKS, DoctorContext

    splits, _ = synthetic(n)
    labels = sorted(set(splits["train"].with_format("arrow")["label"].to_pylist()))
    ctx = DoctorContext(splits=splits, labels=labels, tokenizer=AutoTokenizer.from_pretrained(resolve("minilm")),
                        max_length=32)
    times: dict[str, float] = {}
    findings: dict[str, int] = {}
    for name, (_, check) in CHECKS.items():
        t = time.perf_counter()
        result = check(ctx)
        times[name] = time.perf_counter() - t
        found = result if isinstance(result, list) else ([result] if result else [])
        findings[name] = sum(f.count for f in found)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "seconds": times, "total": sum(times.values()), "peak_mb": peak_mb, "findings": findings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--worker", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n:>9,} texts: {rows[-1]['total']:.1f} s, peak {rows[-1]['peak_mb']:.0f} MB", flush=True)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    checks = list(rows[0]["seconds"])
    print("| check | " + " | ".join(f"{r['n']:,} texts s" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for c in checks:
        print(f"| {c} | " + " | ".join(f"{r['seconds'][c]:.2f}" for r in rows) + " |")
    print("| **total** | " + " | ".join(f"**{r['total']:.1f}**" for r in rows) + " |")
    print("| peak memory MB (whole process) | " + " | ".join(f"{r['peak_mb']:.0f}" for r in rows) + " |")
    print("\nfindings (count) at the largest size:", json.dumps(rows[-1]["findings"]))


if __name__ == "__main__":
    main()
