"""Read deadlines on uvicorn's HTTP/1.1 connections, so that slow clients (slowloris) cannot hold them open.

uvicorn times out only idle keep-alive connections, and any byte received cancels that timer: a client that
sends one header byte every few seconds, or a body one byte at a time, keeps its connection (a socket, a
parser, a task) for as long as it likes. ASGI middleware cannot help with the headers, because the app is
called only once they are complete; so the deadlines live in the protocol.

`deadline_protocol` returns a subclass of uvicorn's HTTP/1.1 protocol (httptools when installed, else h11)
that gives every request two deadlines:

* headers: from the connection's start (or the end of the previous response) until the request's headers
  are complete (``header_timeout_s``);
* body: from then until the whole body has arrived (``body_timeout_s``): a deadline, not an idle timer, so
  a byte at a time does not extend it.

When one passes, the client gets ``408`` (OpenAI's error shape; only if it had begun a request and no
response has started) and the connection is closed. A body timeout also marks the request's scope
(`READ_TIMEOUT`) so that the route, which then sees the connection go away, counts a 408 rather than a
client disconnect.

The subclass reads the attributes both uvicorn protocols share (``cycle``, ``cycle.more_body``,
``cycle.response_started``, ``transport``, ``loop``) and extends their ``connection_made``,
``data_received``, ``on_response_complete`` and ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from tunelab.serve.errors import APIError

READ_TIMEOUT = "tunelab.read_timeout"  # scope key: set when the body deadline closed the connection


def _timeout_response(phase: str, seconds: float) -> bytes:
    body = json.dumps(APIError(408, f"the request's {phase} did not arrive within {seconds:g} s",
                               code="request_timeout").body()).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


def deadline_protocol(header_timeout_s: float, body_timeout_s: float,
                      on_timeout: Callable[[str], None] = lambda phase: None,
                      base: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (pass it as ``uvicorn.Config(http=...)``) with read deadlines.

    ON_TIMEOUT(phase) is called with "headers" or "body" each time a deadline closes a connection (the server
    counts them in /metrics). BASE: the uvicorn protocol to extend (default: what ``http="auto"`` picks)."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    limits = {"headers": header_timeout_s, "body": body_timeout_s}

    class DeadlineProtocol(base):  # type: ignore[valid-type, misc]
        _timer: asyncio.TimerHandle | None = None
        _phase: str | None = None
        _seen: Any = None        # the request cycle whose headers we last saw complete
        _begun = False           # bytes of the next request have arrived (so a 408 makes sense)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm("headers")

        def data_received(self, data: bytes) -> None:
            if self._phase == "headers":
                self._begun = True
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self._phase is None:
                self._arm("headers")
            self._follow()  # h11 parses a pipelined request here

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Move between the phases after the parser has run."""
            cycle = self.cycle
            if cycle is not None and cycle is not self._seen:  # a new request's headers are complete
                self._seen, self._begun = cycle, False
                self._disarm()
                if cycle.more_body and not cycle.response_complete:
                    self._arm("body")
            elif self._phase == "body" and (not cycle.more_body or cycle.response_complete):
                self._disarm()

        def _arm(self, phase: str) -> None:
            self._disarm()
            self._phase = phase
            self._timer = self.loop.call_later(limits[phase], self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, None

        def _expire(self) -> None:
            phase, cycle = self._phase, self.cycle
            self._timer, self._phase = None, None
            if phase is None or self.transport.is_closing():
                return
            on_timeout(phase)
            if phase == "body":
                cycle.scope[READ_TIMEOUT] = True
                answer = not cycle.response_started
            else:  # between requests: the previous cycle (if any) has finished its response
                answer = self._begun and (cycle is None or cycle.response_complete)
            if answer:
                self.transport.write(_timeout_response(phase, limits[phase]))
            self.transport.close()

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineProtocol
