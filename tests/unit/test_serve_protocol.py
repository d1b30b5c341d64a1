"""Read deadlines (`tunelab.serve.protocol`) on a real uvicorn server, with both of uvicorn's HTTP/1.1 parsers:
a client that trickles its headers or its body is answered 408 and disconnected within the deadline, while
prompt requests, keep-alive and responses that take long to compute are left alone."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

uvicorn = pytest.importorskip("uvicorn")

from tunelab.serve.protocol import READ_TIMEOUT, deadline_protocol  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from serve_helpers import running_server, trickle_until_closed  # noqa: E402

HEADERS_S, BODY_S = 0.6, 1.0


def _bases() -> list[str]:
    names = ["h11"]
    try:
        import httptools  # noqa: F401

        names.append("httptools")
    except ImportError:
        pass
    return names


@pytest.fixture(scope="module", params=_bases())
def server(request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    seen: dict = {"timeouts": [], "requests": []}

    async def app(scope: dict, receive, send) -> None:  # echoes the body's length; /slow computes for a while
        body, gone = b"", False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen["requests"].append({"path": scope["path"], "bytes": len(body), "disconnected": gone,
                                 "timed_out": bool(scope.get(READ_TIMEOUT))})
        if gone:
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(BODY_S + HEADERS_S)  # longer than both deadlines: they must not apply any more
        answer = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    base = import_from_string(HTTP_PROTOCOLS[request.param])
    http = deadline_protocol(HEADERS_S, BODY_S, seen["timeouts"].append, base=base)
    config = lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",  # noqa: E731
                                         lifespan="off", http=http, timeout_keep_alive=5)
    with running_server(config) as port:
        yield SimpleNamespace(port=port, seen=seen, kind=request.param)


def _trickle(port: int, first: bytes, drip: bytes) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first)
        return trickle_until_closed(sock, drip, limit=10.0)


def test_trickled_headers_get_408_and_are_closed(server: SimpleNamespace) -> None:
    before = len(server.seen["timeouts"])
    answer, took = _trickle(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Slow: aaaaaaaaaaaaaaaa\r\n")
    assert HEADERS_S * 0.9 <= took < HEADERS_S + 1.5, took
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code": "request_timeout"' in answer, answer[:200]
    assert server.seen["timeouts"][before:] == ["headers"]


def test_a_silent_connection_is_closed_without_an_answer(server: SimpleNamespace) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.perf_counter()
        assert sock.recv(100) == b""  # closed by the server, nothing said: no request had begun
        assert time.perf_counter() - started < HEADERS_S + 1.5


def test_trickled_body_gets_408_and_the_app_sees_it_go(server: SimpleNamespace) -> None:
    before = len(server.seen["timeouts"])
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    answer, took = _trickle(server.port, head, b"a")
    assert BODY_S * 0.9 <= took < BODY_S + 1.5, took
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body" in answer, answer[:200]
    assert server.seen["timeouts"][before:] == ["body"]
    deadline = time.time() + 5
    while not any(r["path"] == "/upload" for r in server.seen["requests"]):
        assert time.time() < deadline, "the app never heard the connection close"
        time.sleep(0.02)
    upload = next(r for r in server.seen["requests"] if r["path"] == "/upload")
    assert upload["disconnected"] and upload["timed_out"] and upload["bytes"] < 1000


def test_prompt_requests_keep_alive_and_slow_responses_are_untouched(server: SimpleNamespace) -> None:
    before = len(server.seen["timeouts"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for path, body in (("/a", b"x" * 10), ("/slow", b"y" * 20), ("/b", b"")):
            time.sleep(HEADERS_S / 2)  # idle between requests, within the deadline
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(BODY_S / 2)  # a body that comes late, but in time
            sock.sendall(body)
            out = b""
            while not out.endswith(str(len(body)).encode()) or b"\r\n\r\n" not in out:
                chunk = sock.recv(4096)
                assert chunk, f"{path}: the server closed the connection ({server.kind})"
                out += chunk
            assert out.startswith(b"HTTP/1.1 200 "), out
    assert server.seen["timeouts"][before:] == []
