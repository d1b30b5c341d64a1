"""Helpers for the serve tests: a uvicorn server on a free loopback port in a thread, and a slow client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(config_for: Callable[[int], Any], start_within_s: float = 60.0) -> Iterator[int]:
    """Run ``uvicorn.Server(config_for(port))`` on a free loopback port in a thread; yield the port, then stop it."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(config_for(port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + start_within_s
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(30)


def trickle_until_closed(sock: socket.socket, drip: bytes, every: float = 0.1, limit: float = 15.0
                         ) -> tuple[bytes, float]:
    """Send DRIP one byte every EVERY seconds (cycling) until the server closes SOCK or LIMIT seconds pass;
    return (what the server answered, seconds taken)."""
    started, answer, i = time.perf_counter(), b"", 0
    sock.settimeout(every)
    while time.perf_counter() - started < limit:
        try:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
            continue
        except socket.timeout:
            pass
        try:
            sock.sendall(drip[i % len(drip):i % len(drip) + 1])
        except OSError:  # reset by the server: closed
            break
        i += 1
    return answer, time.perf_counter() - started
