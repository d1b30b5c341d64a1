"""tunelab serve under hostile traffic, on a real uvicorn server over loopback (the runs of `serve_runs`).

* a seeded fuzz of every route (wrong types, huge numbers, lone surrogates, nested junk, missing fields, oversized
  and broken bodies, wrong content types and methods): no answer is a 5xx, and /metrics counts none;
* the cases a probe found (issue 14): a lone surrogate in /v1/classify, ``seed: 2**70``, ``max_tokens: "5"``;
* slow clients: trickled headers and bodies are answered 408 and disconnected within the read deadlines;
* a client that hangs up is counted in /metrics as 499, never as 500.

Normal OpenAI-compatible calls go through the official `openai` client; malformed traffic through raw httpx or
sockets (httpx cannot even encode a lone surrogate).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from tunelab.serve import ServeSettings, create_app  # noqa: E402
from tunelab.serve.cli import server_config  # noqa: E402
from serve_helpers import running_server, trickle_until_closed  # noqa: E402

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 1.5
MAX_BODY = 64 * 1024
CHAT = [{"role": "user", "content": "what is the city number 3?"}]
VALID = {  # one valid body per model route; the fuzz mutates them
    "/v1/chat/completions": {"model": "serve-chat", "messages": CHAT, "max_tokens": 4, "temperature": 0.5,
                             "top_p": 0.9, "n": 1, "stop": ["\n"], "seed": 3, "stream": False, "user": "u"},
    "/v1/completions": {"model": "serve-completion", "prompt": "the city", "max_tokens": 4, "temperature": 0.0,
                        "n": 1, "stream": False, "seed": 1},
    "/v1/embeddings": {"model": "serve-tc", "input": ["goal match", "rain"], "encoding_format": "float"},
    "/v1/classify": {"model": "serve-tc", "input": ["goal match team", "rain storm"], "top_k": 2},
}


@pytest.fixture(scope="module")
def server(serve_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    db = tmp_path_factory.mktemp("fuzz-db") / "requests.db"
    runs = [serve_runs[name] for name in ("serve-tc", "serve-chat", "serve-completion", "serve-img")]
    settings = ServeSettings(allow_worse=True, api_keys=(KEY,), db=f"sqlite:///{db}", max_body_bytes=MAX_BODY,
                             max_input_tokens=64, max_tokens=8, max_n=2, timeout_s=30,
                             header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S)
    app = create_app(runs, settings)
    with running_server(lambda port: server_config(app, "127.0.0.1", port, "error")) as port:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, state=app.state.tunelab)


def _raw(body: Any) -> bytes:
    """BODY as JSON bytes, lone surrogates written as \\ud800 escapes (as a JavaScript client would send them)."""
    return json.dumps(body, ensure_ascii=True).encode()


def _post(server: SimpleNamespace, path: str, body: Any, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else _raw(body)
    return httpx.post(server.url + path, content=content, timeout=60,
                      headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


def _metric(server: SimpleNamespace, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _server_errors(server: SimpleNamespace) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("tunelab_requests_total{") and re.search(r'status="5\d\d"', line)}


# ------------------------------------------------------------------------------------------------- fuzz
JUNK: list[Any] = ["5", "", "\ud800 x", "x\udfff", "\ud83d", 0, -1, 1.5, 2**70, -(2**70), 1e308, -1e308, True, False,
                   None, [], {}, [[[[]]]], {"a": {"b": [1, {"c": None}]}}, ["\ud800"], [1, "two", None],
                   {"\ud800": 1}, "x" * 5000, ["goal"] * 300, [{"role": "user"}], [{"type": "text"}]]


def _junk(rng: random.Random) -> Any:
    if rng.random() < 0.1:  # deep nesting
        value: Any = "leaf"
        for _ in range(rng.choice([50, 500])):  # deeper: raw bytes in `_mutate` (json.dumps recurses)
            value = [value] if rng.random() < 0.5 else {"k": value}
        return value
    return rng.choice(JUNK)


def _mutate(rng: random.Random, route: str) -> tuple[bytes, dict[str, str]]:
    """One malformed request for ROUTE: (body bytes, extra headers)."""
    body = json.loads(json.dumps(VALID[route]))
    kind = rng.randrange(10)
    headers: dict[str, str] = {}
    if kind <= 3:  # a field of the wrong type or value
        body[rng.choice(sorted(body))] = _junk(rng)
    elif kind == 4:  # a missing field (or several)
        for key in rng.sample(sorted(body), rng.randint(1, len(body))):
            del body[key]
    elif kind == 5:  # junk inside the nested text inputs
        if "messages" in body:
            body["messages"][0][rng.choice(["content", "role", "name", "extra"])] = _junk(rng)
        else:
            key = "prompt" if "prompt" in body else "input"
            body[key] = [_junk(rng), "ok"] if rng.random() < 0.5 else _junk(rng)
    elif kind == 6:  # unknown fields and OpenAI parameters tunelab refuses, with junk values
        body.update({rng.choice(["tools", "logit_bias", "response_format", "logprobs", "echo", "best_of",
                                 "dimensions", "stream_options", "whatever", "\ud800"]): _junk(rng)})
    elif kind == 7:  # not JSON, not an object, not UTF-8, truncated
        return rng.choice([b"", b"{", b"{bad json", b"[1, 2]", b'"text"', b"null", b"\xff\xfe\x00",
                           b'{"model": NaN}', b'{"model": Infinity}', _raw(body)[:-3], b"\x00" * 64,
                           b'{"input": "\\ud800"}', b'{"a": 1e99999}',
                           b'{"model": "serve-tc", "input": ' + b"[" * 20000 + b"]" * 20000 + b"}"]), headers
    elif kind == 8:  # a wrong content type (the body is parsed as JSON whatever the header says)
        headers["Content-Type"] = rng.choice(["text/plain", "multipart/form-data; boundary=x",
                                              "application/x-www-form-urlencoded", "application/json; charset=latin-1"])
    else:  # oversized: over the body limit, or inputs over the server's caps
        if rng.random() < 0.5:
            return _raw({**body, "pad": "y" * (MAX_BODY + 10)}), headers
        body["max_tokens" if "max_tokens" in body else "input"] = rng.choice([10**6, ["z" * 4000] * 10])
    return _raw(body), headers


def _get_requests(rng: random.Random, n: int) -> list[tuple[str, str, bytes, dict[str, str]]]:
    paths = ["/health", "/metrics", "/v1/models", "/v1/models/serve-tc", "/v1/models/%ED%A0%80",
             "/v1/models/" + "m" * 3000, "/v1/models/%00", "/v1/models/../../etc/passwd", "/v1/models?x=%ff",
             "/v1/classify", "/v1//models", "/%", "/v1/chat/completions?stream=true"]
    out = []
    for _ in range(n):
        method = rng.choice(["GET", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        out.append((method, rng.choice(paths), b"" if method in ("GET", "HEAD") else b"{}", {}))
    return out


def test_fuzzed_requests_never_get_a_5xx(server: SimpleNamespace) -> None:
    rng = random.Random(14)
    requests = [("POST", route, *_mutate(rng, route)) for _ in range(70) for route in VALID]
    requests += _get_requests(rng, 40)
    rng.shuffle(requests)

    async def fire() -> list[tuple[int, str]]:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            async def one(method: str, path: str, content: bytes, headers: dict[str, str]) -> tuple[int, str]:
                async with limit:
                    try:
                        r = await c.request(method, path, content=content,
                                            headers={"Content-Type": "application/json", **AUTH, **headers})
                    except httpx.TransportError as err:  # closed without an answer: as bad as a 500
                        return 0, f"no answer: {err!r}"
                    return r.status_code, r.text
            return await asyncio.gather(*(one(*req) for req in requests))

    answers = asyncio.run(fire())
    failures = [(req[0], req[1], req[2][:120], status, text[:300]) for req, (status, text) in zip(requests, answers)
                if status >= 500 or status == 0]
    statuses = sorted({status for status, _ in answers})
    print(f"\nfuzz: {len(requests)} requests, {len(failures)} answered 5xx or not at all; statuses seen: {statuses}")
    assert not failures, failures[:5]
    assert {200, 400, 404, 405, 413} <= set(statuses)  # the fuzz reached every layer, valid requests included
    for status, text in answers:  # every refusal is an OpenAI-style error naming what was wrong
        if 400 <= status < 500 and text:
            assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}, text
    assert _server_errors(server) == {}
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"


# ---------------------------------------------------------------------------------- the probe's findings
@pytest.mark.parametrize("route, body, param", [
    ("/v1/classify", {"model": "serve-tc", "input": "\ud800 x"}, "input"),
    ("/v1/classify", {"model": "serve-tc", "input": ["fine", {"text": "a\udc00"}]}, "input.1.text"),
    ("/v1/embeddings", {"model": "serve-tc", "input": ["ok", "\udfff"]}, "input.1"),
    ("/v1/chat/completions", {"model": "serve-chat", "messages": [{"role": "user", "content": "hi \ud83d"}]},
     "messages.0.content"),
    ("/v1/completions", {"model": "serve-completion", "prompt": "x", "stop": ["\ud800"]}, "stop.0"),
    ("/v1/classify", {"model": "serve-\ud800", "input": "goal"}, "model"),
])
def test_lone_surrogates_are_a_400_naming_the_field(server: SimpleNamespace, route: str, body: dict,
                                                    param: str) -> None:
    r = _post(server, route, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_unicode" and "surrogate" in error["message"]


def test_surrogate_pairs_are_text(server: SimpleNamespace) -> None:
    r = _post(server, "/v1/classify", {"model": "serve-tc", "input": "goal \U0001F600"})  # sent as \ud83d\ude00
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("seed", [2**70, 2**64, -(2**63) - 1, "1", 1.5, True])
def test_out_of_range_or_mistyped_seeds_are_a_400(server: SimpleNamespace, seed: Any) -> None:
    r = _post(server, "/v1/chat/completions", {"model": "serve-chat", "messages": CHAT, "seed": seed})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "seed" and r.json()["error"]["type"] == "invalid_request_error"


def test_seeds_at_the_ends_of_the_range_work(server: SimpleNamespace) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    for seed in (2**64 - 1, -(2**63), 0):
        r = client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=2, temperature=1.0,
                                           seed=seed)
        assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("field, value, says", [
    ("max_tokens", "5", "valid integer, not a string"),
    ("n", 1.0, "valid integer, not a number"),
    ("max_tokens", True, "valid integer, not a boolean"),
    ("temperature", "0.5", "valid number, not a string"),
    ("stream", 1, "valid boolean, not a number"),
    ("stop", 5, "not a number"),
    ("user", ["u"], "valid string, not an array"),
])
def test_strict_types(server: SimpleNamespace, field: str, value: Any, says: str) -> None:
    r = _post(server, "/v1/chat/completions", {"model": "serve-chat", "messages": CHAT, field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and says in error["message"] and error["code"] == "invalid_value", error
    top_k = _post(server, "/v1/classify", {"model": "serve-tc", "input": "goal", "top_k": "2"})
    assert top_k.status_code == 400 and top_k.json()["error"]["param"] == "top_k"


# ------------------------------------------------------------------------------------------ slow clients
def test_trickling_headers_and_bodies_are_closed_in_time(server: SimpleNamespace) -> None:
    headers_before = _metric(server, "tunelab_read_timeouts_total", phase="headers")
    timed_out_before = _metric(server, "tunelab_requests_total", route="/v1/classify", status="408")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        answer, took = trickle_until_closed(sock, b"X-Slow: " + b"a" * 50)
    assert took < HEADERS_LIMIT and answer.startswith(b"HTTP/1.1 408 "), (took, answer[:200])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n".encode() + b'{"model": "serve-tc", ')
        answer, took = trickle_until_closed(sock, b'"input": "goal goal goal goal goal ')
    assert took < BODY_LIMIT and answer.startswith(b"HTTP/1.1 408 "), (took, answer[:200])
    assert b'"request_timeout"' in answer
    # at least ours: a keep-alive connection an earlier test left idle on the shared server times out the same way
    assert _metric(server, "tunelab_read_timeouts_total", phase="headers") >= headers_before + 1
    assert _metric(server, "tunelab_read_timeouts_total", phase="body") >= 1
    deadline = time.time() + 10  # the route saw the connection close: counted as 408, not a disconnect or a 500
    while _metric(server, "tunelab_requests_total", route="/v1/classify", status="408") < timed_out_before + 1:
        assert time.time() < deadline, "the body timeout was not counted as a 408"
        time.sleep(0.1)
    assert _server_errors(server) == {}


HEADERS_LIMIT = HEADER_TIMEOUT_S + 2.0  # the deadline plus slack for a busy test machine
BODY_LIMIT = BODY_TIMEOUT_S + 2.0


def test_a_client_hanging_up_is_a_499_not_a_500(server: SimpleNamespace) -> None:
    """(A hang-up mid-stream is counted the same way: tests/unit/test_serve_units.py, where it can be timed.)"""
    def count() -> float:
        return _metric(server, "tunelab_requests_total", route="/v1/classify", status="499")

    before = count()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:  # gone mid-body
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n".encode() + b'{"model": ')
        time.sleep(0.2)
    deadline = time.time() + 10
    while count() < before + 1:
        assert time.time() < deadline, "the hang-up was not counted as a 499"
        time.sleep(0.1)
    assert _server_errors(server) == {}
    server.state.writer.flush()
    rows = [r for r in server.state.store.query() if r["route"] == "/v1/classify" and r["status"] == 499]
    assert rows and "closed the connection" in rows[-1]["error"]
