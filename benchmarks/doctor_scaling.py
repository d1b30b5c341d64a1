"""How the doctor's duplicate checks scale: 10k, 100k and 1M short synthetic texts.

What: texts of 8-30 words drawn from a Zipfian vocabulary of 50,000 made-up words (exponent 1.1, like
natural text), three labels, split 80/10/10 into train/validation/test. Injected: 2% exact copies of
another row (a tenth of them upper-cased or with a trailing "!", which normalisation must undo) and 2%
near-copies (another row with one word replaced: two changed bigrams, so only texts of 19+ words reach
Jaccard 0.8). Copies land in any split, so some are leakage rather than within-split duplicates.

Timed: the shared analysis in its parts (normalize_texts; encode = exact grouping; near_duplicates =
word hashes, shingles, MinHash, LSH, exact verification, union-find) and each registered check
(exact-duplicate, near-duplicate, leakage, conflicting-labels) after it. Each size runs in a fresh
subprocess, so peak RSS is per size; "checks peak" samples RSS every 10 ms while the checks run (in
brackets: above the RSS before them), "process peak" is ru_maxrss (includes data generation).
Quality (not timed): of the injected near-copies whose exact Jaccard reaches 0.8, how many the analysis
put in one cluster with their original.

Run: .venv/bin/python benchmarks/doctor_scaling.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHECKS = ("exact-duplicate", "near-duplicate", "leakage", "conflicting-labels")
PARTS = ("normalize_texts", "encode", "near_duplicates")


def synthetic(n: int, seed: int = 0) -> tuple[dict[str, datasets.Dataset], dict[str, Any]]:
    """N texts as train/validation/test Datasets (a `row` column keeps the generated order), and the
    injected copies: their counts and the (copy, original) rows of the near-copies."""
    rng = np.random.default_rng(seed)
    vocab_size = 50_000
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    word_len = rng.integers(2, 10, vocab_size)
    vocab = pa.array(["".join(letters[rng.integers(0, 26, k)]) for k in word_len], pa.large_string())
    cdf = np.cumsum(1.0 / np.arange(1, vocab_size + 1) ** 1.1)
    lengths = rng.integers(8, 31, n)
    n_exact = n_near = n // 50
    perm = rng.permutation(n)
    exact_t, near_t, originals = perm[:n_exact], perm[n_exact:n_exact + n_near], perm[n_exact + n_near:]
    exact_s, near_s = rng.choice(originals, n_exact), rng.choice(originals, n_near)
    lengths[exact_t], lengths[near_t] = lengths[exact_s], lengths[near_s]
    offsets = np.r_[0, np.cumsum(lengths)]
    ids = np.searchsorted(cdf, rng.random(offsets[-1]) * cdf[-1])

    def positions(rows: np.ndarray) -> np.ndarray:  # every word position of ROWS, row after row
        before = np.r_[0, np.cumsum(lengths[rows])[:-1]]
        return np.repeat(offsets[rows] - before, lengths[rows]) + np.arange(lengths[rows].sum())

    for t, s in ((exact_t, exact_s), (near_t, near_s)):
        ids[positions(t)] = ids[positions(s)]
    ids[offsets[near_t] + rng.integers(0, lengths[near_t])] = vocab_size - 1 - rng.integers(0, 1000, n_near)
    words = vocab.take(pa.array(ids))
    texts = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), words), pa.scalar(" ", pa.large_string()))
    varied = np.sort(exact_t[: n_exact // 10])  # normalisation must undo case and edge punctuation
    fixed = [t.upper() if i % 2 else t + "!" for i, t in enumerate(texts.take(pa.array(varied)).to_pylist())]
    mask = np.zeros(n, bool)
    mask[varied] = True
    texts = pc.replace_with_mask(texts, pa.array(mask), pa.array(fixed, pa.large_string()))
    labels = pa.array(np.array(["negative", "neutral", "positive"])[rng.integers(0, 3, n)], pa.large_string())
    locations = pa.array([f"synthetic.csv:{i + 2}" for i in range(n)], pa.large_string())
    table = pa.table({"text": texts, "label": labels, "location": locations, "row": np.arange(n)})
    split = rng.choice(3, n, p=[0.8, 0.1, 0.1])
    splits = {name: datasets.Dataset(datasets.table.InMemoryTable(table.filter(pa.array(split == i))))
              for i, name in enumerate(("train", "validation", "test"))}
    return splits, {"exact": n_exact, "near": n_near, "near_pairs": np.stack([near_t, near_s], 1)}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def near_recall(a: Any, pairs: np.ndarray, n: int) -> dict[str, float]:
    """Of the injected near-copies whose exact word-bigram Jaccard reaches the threshold, the share the
    analysis put in one cluster with their original (not timed)."""
    from tunelab.data import dedup
    from tunelab.data.checks.dedup import PARAMS

    rows = np.concatenate([ds.with_format("arrow")["row"].to_numpy() for ds in a.splits])
    where = np.empty(n, dtype=np.int64)
    where[rows] = np.arange(n)
    codes = a.codes[where[pairs]]
    distinct = np.unique(codes)
    hashes, offsets = dedup.shingle_hashes(a.distinct.take(pa.array(distinct)), PARAMS.ngram)
    jac = dedup.exact_jaccard(hashes, offsets, np.searchsorted(distinct, codes))
    eligible = codes[jac >= PARAMS.threshold]
    found = a.cluster[eligible[:, 0]] == a.cluster[eligible[:, 1]]
    return {"eligible": len(eligible), "found": int(found.sum())}


def worker(n: int) -> dict[str, Any]:
    """Generate N texts, run the checks once, and return the timings, counts and memory."""
    import tunelab.data.checks.dedup as cd
    from tunelab.data import dedup
    from tunelab.data.doctor import CHECKS as REGISTRY
    from tunelab.data.doctor import DoctorContext

    splits, injected = synthetic(n)
    seconds: dict[str, float] = {}
    for part in PARTS:  # time the analysis' parts where the checks call them
        original = getattr(dedup, part)

        def timed(*args: Any, _f: Any = original, _name: str = part, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - start

        setattr(dedup, part, timed)
    ctx = DoctorContext(splits=splits, labels=["negative", "neutral", "positive"])
    base, peak, done = rss_mb(), [rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    cd.analyse(ctx)
    seconds["analysis"] = time.perf_counter() - start
    counts: dict[str, int] = {}
    for name in CHECKS:
        t0 = time.perf_counter()
        finding = REGISTRY[name][1](ctx)
        seconds[name] = time.perf_counter() - t0
        counts[name] = finding.count if finding is not None else 0
    seconds["total"] = time.perf_counter() - start
    done.set()
    peak[0] = max(peak[0], rss_mb())
    injected["recall"] = near_recall(cd.analyse(ctx), injected.pop("near_pairs"), n)
    return {"n": n, "seconds": seconds, "counts": counts, "injected": injected, "base_mb": base,
            "checks_peak_mb": peak[0], "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # deliberate: no CPU model name on this platform; platform.machine() is printed instead
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cores} usable core(s), Python {platform.python_version()}, numpy {np.__version__}, "
            f"pyarrow {pa.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    results = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"... {n:,} texts: {results[-1]['seconds']['total']:.1f} s", file=sys.stderr)
    print(f"Machine: {machine()}\n")
    cols = ["normalize_texts", "encode", "near_duplicates", "analysis", *CHECKS, "total"]
    print("| texts | " + " | ".join(f"{c} s" for c in cols) + " | checks peak RSS MB | process peak MB |")
    print("|---" * (len(cols) + 3) + "|")
    for r in results:
        s, peak = r["seconds"], r["checks_peak_mb"]
        print(f"| {r['n']:,} | " + " | ".join(f"{s.get(c, 0.0):.2f}" for c in cols)
              + f" | {peak:.0f} (+{peak - r['base_mb']:.0f}) | {r['process_peak_mb']:.0f} |")
    print("\n| texts | injected exact / near | exact-duplicate | near-duplicate | leakage rows | conflicting-labels "
          "| near-copies at Jaccard >= 0.8: found / all |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        c, i, rec = r["counts"], r["injected"], r["injected"]["recall"]
        print(f"| {r['n']:,} | {i['exact']:,} / {i['near']:,} | {c['exact-duplicate']:,} | {c['near-duplicate']:,} | "
              f"{c['leakage']:,} | {c['conflicting-labels']:,} | {rec['found']:,} / {rec['eligible']:,} |")
    print("\nGrowth of total time (linear scaling = the size ratio):")
    for a, b in zip(results, results[1:]):
        print(f"  {a['n']:,} -> {b['n']:,} ({b['n'] / a['n']:.0f}x texts): "
              f"{b['seconds']['total'] / a['seconds']['total']:.1f}x time")


if __name__ == "__main__":
    main()
