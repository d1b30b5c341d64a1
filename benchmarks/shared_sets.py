"""What the issue-13 benchmarks (defaults, fewshot, search, ladder) share: the shared data sets read as
(text, label) rows, written as the text,label CSV tunelab reads, and the machine a result came from.

The data sets are not shipped: they are looked for in ../shared/datasets beside the repository, or where
TUNELAB_SHARED_DATASETS points.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from pathlib import Path

SHARED = Path(os.environ.get("TUNELAB_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def read_set(name: str) -> list[tuple[str, str]]:
    """Every (text, label) row of one shared set: fpb (Financial PhraseBank AllAgree), amazon (Amazon reviews,
    train), unfair (CLAUDETTE ToS sentences, fair vs unfair)."""
    if name == "fpb":
        with (SHARED / "financial_phrasebank/fpb_allagree.csv").open(encoding="utf-8") as f:
            return [(r["sentence"], r["label"]) for r in csv.DictReader(f)]
    if name == "amazon":
        lines = (SHARED / "sentiment_amazon_reviews/amazon_train.jsonl").read_text(encoding="utf-8").splitlines()
        return [(r.get("text") or r.get("review") or r.get("sentence"), str(r["label"])) for r in map(json.loads, lines)]
    if name == "unfair":
        lines = (SHARED / "legal_unfair_tos/unfair_tos_en.jsonl").read_text(encoding="utf-8").splitlines()
        return [(r["text"], "unfair" if r["unfair"] else "fair") for r in map(json.loads, lines)]
    raise SystemExit(f"unknown set {name}")


def write_csv(rows: list[tuple[str, str]], path: Path) -> str:
    """ROWS as a text,label CSV at PATH; returns the path as a string (what a spec's data.train takes)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


def machine() -> dict[str, object]:
    """The machine a result was measured on."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
