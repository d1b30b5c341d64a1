"""The doctor's vocabulary: Finding, DoctorContext, the check registry and `register_check`.

Check modules (`tunelab.data.checks.*`) import this module and nothing from `tunelab.data.doctor`, so
the registry has no import cycle: `tunelab.data.checks` imports every check module once, in the order
the checks run, and `tunelab.data.doctor` imports that package and runs what is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import datasets

Severity = Literal["error", "warning", "info"]
SPLIT_ORDER = ("train", "validation", "test")  # leakage looks for each split's rows in the earlier ones
MAX_EXAMPLES = 5  # described examples per finding; `Finding.locations` lists every affected row


@dataclass
class Finding:
    check: str
    severity: Severity
    message: str
    count: int
    fix: str
    examples: list[str] = field(default_factory=list)  # a described sample, for people (console, HTML)
    details: dict[str, Any] = field(default_factory=dict)  # check-specific numbers (histograms, ratios)
    locations: list[str] = field(default_factory=list)  # EVERY affected row, for scripts and `data clean`

    def __post_init__(self) -> None:
        # one location per affected row, in order, each once (a row with two bad messages is one row)
        self.locations = list(dict.fromkeys(self.locations))

    def render(self) -> str:
        where = "".join(f"\n    at {e}" for e in self.examples)
        more = f"\n    ... and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return f"[{self.severity}] {self.check}: {self.message}{where}{more}\n    fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorContext:
    """What the checks see: labelled splits (before splitting when `needs_split`), and the label set.

    `splits` hold the canonical columns text / label / location. Optional inputs let more checks run:
    a tokenizer and max_length (token-length checks), raw records per split (chat-format checks),
    image paths per split (image checks). A check whose input is absent returns None.
    """

    splits: dict[str, datasets.Dataset]
    labels: list[str]
    multi_label: bool = False
    needs_split: bool = False
    min_per_class: int = 3
    tokenizer: Any = None
    max_length: int | None = None
    records: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    columns: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # split -> (source, its columns)
    used_columns: tuple[str, ...] = ("text", "label")


Check = Callable[[DoctorContext], "Finding | list[Finding] | None"]
CHECKS: dict[str, tuple[Severity, Check]] = {}


def register_check(name: str, severity: Severity) -> Callable[[Check], Check]:
    """Register a check under NAME; its findings carry SEVERITY."""

    def wrap(fn: Check) -> Check:
        CHECKS[name] = (severity, fn)
        return fn

    return wrap


def sample(items: list[str]) -> list[str]:
    """The first MAX_EXAMPLES of ITEMS: what a person reads; `Finding.locations` keeps every one."""
    return list(items[:MAX_EXAMPLES])


def column(ds: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a list, through Arrow: `list(ds[name])` goes row by row (40 s for a million rows)."""
    return ds.with_format("arrow")[name].to_pylist()
