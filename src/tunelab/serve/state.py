"""The server's shared state: the loaded models, settings, metrics and request-log writer (`ServerState`), the
record one model-route request leaves in the request log (`RequestRecord`), and the bounded route label the
metrics use.

Kept apart from the middleware and the routes because both read it: this module imports neither, so the
request path can depend on it without a cycle.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tunelab.serve.errors import APIError
from tunelab.serve.metrics import ServeMetrics
from tunelab.serve.models import ServedModel
from tunelab.serve.settings import ServeSettings
from tunelab.serve.store import RequestStore, StoreWriter, _row, canonical_input, hash_input

logger = logging.getLogger("tunelab.serve")

MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/classify")
KNOWN_ROUTES = ("/health", "/metrics", "/v1/models", *MODEL_ROUTES)
OPEN_PATHS = ("/health",)


def route_label(path: str) -> str:
    """A bounded label for metrics: the route, or 'other' (unknown paths must not grow the label set)."""
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return "other"


# --------------------------------------------------------------------------------------------- state
@dataclass
class RequestRecord:
    """What one model-route request leaves in the request log."""

    route: str
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    model: str = ""
    served: bool = False
    status: int = 200
    input: Any = None
    input_hash: str = ""
    input_tokens: int | None = None
    output: Any = None
    label: str | None = None
    score: float | None = None
    scores: Any = None
    error: str | None = None

    def set_input(self, value: Any, keep: bool) -> None:
        self.input_hash = hash_input(value)
        self.input = canonical_input(value) if keep else None

    def fail(self, err: APIError) -> None:
        self.status, self.error, self.output = err.status, err.message, None


class ServerState:
    def __init__(self, settings: ServeSettings, models: dict[str, ServedModel], store: RequestStore | None) -> None:
        self.settings, self.models, self.store = settings, models, store
        self.metrics = ServeMetrics()
        self.writer: StoreWriter | None = None
        self.started = time.time()
        self._keys = [hashlib.sha256(k.encode()).digest() for k in settings.api_keys]

    def authorized(self, header: str | None) -> bool:
        """Bearer token check, constant time: the token's sha256 is compared with every key's."""
        if not self._keys:
            return True
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(digest, key)
        return ok

    def model_for(self, name: Any, route: str, rec: RequestRecord) -> ServedModel:
        served = self.models.get(name) if isinstance(name, str) else None
        if served is None:
            raise APIError(404, f"model '{str(name)[:200]}' not found; this server serves: "
                           f"{', '.join(sorted(self.models))}", param="model", code="model_not_found")
        rec.model, rec.served = served.name, True
        if route not in served.routes:
            raise APIError(400, f"model '{served.name}' is a {served.task_name} run; it serves "
                           f"{' and '.join(served.routes)}, not {route}", param="model", code="unsupported_route")
        return served

    def finish(self, rec: RequestRecord) -> None:
        latency_ms = (time.perf_counter() - rec.t0) * 1000.0
        if self.writer is None:
            return
        try:
            self.writer.submit(_row(rec.model, rec.route, rec.status, latency_ms, None,
                                    rec.input_hash or hash_input(b""), rec.input_tokens, rec.output, rec.label,
                                    rec.score, rec.scores, rec.error, rec.ts) | {"input": rec.input})
        except Exception:  # noqa: BLE001 - logging must never fail a request
            logger.exception("request log: could not queue a row")


def _now() -> int:
    """The ``created`` timestamp of a response: whole seconds since the epoch."""
    return int(time.time())
