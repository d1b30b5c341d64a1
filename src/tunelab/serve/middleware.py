"""The ASGI middleware around every request: metrics (outermost), API-key auth, and the body-size cap; and how
a request whose connection went away early is counted (`_gone`: 499, or 408 after a read deadline).

Plain ASGI classes rather than FastAPI dependencies, so that a refused request (401, 413) is answered before
any body is read or parsed and is still counted by the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.serve.errors import APIError
from tunelab.serve.protocol import READ_TIMEOUT
from tunelab.serve.state import OPEN_PATHS, ServerState, route_label


async def _send_json(send: Callable, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": payload})


CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the response was complete"


def _gone(scope: dict) -> APIError:
    """What a request whose connection went away early counts as: 408 when the server closed it because the
    body came too slowly (`tunelab.serve.protocol`), else 499 (the client left)."""
    if scope.get(READ_TIMEOUT):
        return APIError(408, "the request body did not arrive in time", code="request_timeout")
    return APIError(CLIENT_CLOSED, "the client closed the connection before the response was complete",
                    code="client_closed_request")


class MetricsMiddleware:
    """Counts every HTTP request (route, model, status), its latency and errors.

    A request whose client disconnected before the response was complete (mid-body, while waiting, or
    mid-stream) counts as 499 whatever status was started, so that client behaviour never shows as a 500."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, complete, gone = [500], [False], [False]

        async def tracking_receive() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete[0]:
                gone[0] = True
            return message

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete[0] = True  # before the send: a disconnect the server reports after it is not the client's
            await send(message)

        try:
            await self.app(scope, tracking_receive, tracking_send)
        finally:
            code = _gone(scope).status if gone[0] else status[0]
            m, route = self.state.metrics, route_label(scope.get("path", ""))
            model = scope.get("tunelab.model", "")
            m.requests.labels(route, model, str(code)).inc()
            m.latency.labels(route, model).observe(time.perf_counter() - started)
            if code >= 400:
                m.errors.labels(route, model, str(code)).inc()


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
