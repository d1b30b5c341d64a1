"""The ASGI middleware around every request: metrics (outermost), API-key auth, and the body-size cap.

Plain ASGI classes rather than FastAPI dependencies, so that a refused request (401, 413) is answered before
any body is read or parsed and is still counted by the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.serve.errors import APIError
from tunelab.serve.state import OPEN_PATHS, ServerState, route_label


async def _send_json(send: Callable, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": payload})


class MetricsMiddleware:
    """Counts every HTTP request (route, model, status), its latency and errors."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            m, route = self.state.metrics, route_label(scope.get("path", ""))
            model = scope.get("tunelab.model", "")
            m.requests.labels(route, model, str(status[0])).inc()
            m.latency.labels(route, model).observe(time.perf_counter() - started)
            if status[0] >= 400:
                m.errors.labels(route, model, str(status[0])).inc()


class AuthMiddleware:
    """With API keys configured, every path but /health needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
            if not self.state.authorized(header):
                return await _send_json(send, 401, APIError(
                    401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key").body(), [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses a declared Content-Length over the cap with 413 before anything is read or parsed.
    (Bodies without a length are counted as they are read, in `_read_body`.)"""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
            if declared is not None:
                if not declared.strip().isdigit():
                    return await _send_json(send, 400, APIError(400, "invalid Content-Length header").body())
                if int(declared) > self.limit:
                    return await _send_json(send, 413, _too_large(self.limit).body())
        return await self.app(scope, receive, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than this server's limit of {limit} bytes", code="request_too_large")
