"""Server settings: one dataclass shared by `create_app` and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tunelab.export.onnx_encoder import INT8_MAX_METRIC_DROP, INT8_MIN_AGREEMENT


RUNTIMES = ("auto", "onnx", "torch")


@dataclass
class ServeSettings:
    """What the server allows and how it batches. Every cap is enforced per request with a 4xx, never a 500."""

    api_keys: tuple[str, ...] = ()       # empty: no auth; else Bearer keys required on every route but /health
    db: str | None = None                # request-log URL; None: sqlite next to the first run; "none": no log
    log_inputs: bool = True              # False: store only the inputs' sha256
    max_batch_size: int = 16             # items per model call (texts, images, generation requests)
    max_wait_ms: float = 5.0             # how long the first queued item waits for company
    max_batch_tokens: int = 512          # CPU only: a text batch runs in sub-batches of at most this many tokens
    max_body_bytes: int = 4 * 1024 * 1024
    max_input_tokens: int = 2048         # per text / per prompt
    max_tokens: int = 512                # cap on max_tokens (and the chat default)
    max_n: int = 4
    max_inputs: int = 256                # texts/images per classify or embeddings request, prompts per completion
    max_image_pixels: int = 25_000_000   # width * height of one decoded image
    timeout_s: float = 60.0              # per request (queue wait included); 504 after it
    header_timeout_s: float = 10.0       # a request's headers must arrive within this (slowloris); else 408, closed
    body_timeout_s: float = 30.0         # ... and its body within this after them (a deadline, not an idle timer)
    max_pending: int = 4096              # queued items per model before 503 (overloaded)
    runtime: str = "auto"                # text classifiers on the CPU: auto (ONNX Runtime when it verifies), onnx, torch
    threads: int | None = None           # compute threads per model call (None: torch's current setting)
    quantize: str | None = None          # "int8": ONNX Runtime int8 for text classifiers, checked on held-out texts
    allow_worse: bool = False            # serve runs the promotion gate refused (run.json status not-promoted)
    min_int8_agreement: float = INT8_MIN_AGREEMENT    # int8 must give the float model's label this often
    max_int8_metric_drop: float = INT8_MAX_METRIC_DROP  # ... and lose at most this much of the run's metric

    def __post_init__(self) -> None:
        self.api_keys = tuple(k for k in self.api_keys if k)
        for name in ("max_batch_size", "max_body_bytes", "max_input_tokens", "max_tokens", "max_n", "max_inputs",
                     "max_pending"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must be >= 0 (0: never split a batch)")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be 'int8' or unset, not {self.quantize!r}")
        if self.quantize and self.runtime == "torch":
            raise ValueError("quantize int8 runs on ONNX Runtime; it cannot be combined with runtime 'torch'")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and timeout_s > 0")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ValueError("header_timeout_s and body_timeout_s must be > 0")


def keys_from_env(var: str = "TUNELAB_API_KEYS") -> list[str]:
    """API keys from a comma-separated environment variable (blank entries ignored)."""
    return [k.strip() for k in os.environ.get(var, "").split(",") if k.strip()]
