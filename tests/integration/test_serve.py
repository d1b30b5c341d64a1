"""tunelab serve against a real uvicorn server on a loopback port, with the official `openai` client.

Five tiny runs (text, image and text+image classifiers, a chat run and a completion run; the `serve_runs`
fixture in conftest.py) are trained once per session in a few seconds each; one server serves them all, with API
keys and small caps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from tunelab.serve import ServeSettings, create_app  # noqa: E402
from tunelab.serve.cli import server_config  # noqa: E402
from serve_helpers import running_server  # noqa: E402  (tests/ is on sys.path: tests/integration/conftest.py)

KEY, OTHER_KEY = "test-key-1", "test-key-2"
# Every app here serves one-epoch runs that check the serving contract, not accuracy: some end below their
# baseline (run.json not-promoted), which the server refuses unless allow_worse (tests/integration/test_cli.py
# checks that refusal).
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "what is the city number 3?"}]


@pytest.fixture(scope="module")
def server(serve_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    db = tmp_path_factory.mktemp("serve-db") / "requests.db"
    settings = ServeSettings(allow_worse=True, api_keys=(KEY, OTHER_KEY), db=f"sqlite:///{db}", max_body_bytes=256 * 1024,
                             max_input_tokens=128, max_tokens=16, max_n=2, timeout_s=60)
    app = create_app(list(serve_runs.values()), settings)
    with running_server(lambda port: server_config(app, "127.0.0.1", port, "warning")) as port:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, state=app.state.tunelab, runs=serve_runs)


@pytest.fixture(scope="module")
def client(server: SimpleNamespace) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(server: SimpleNamespace, path: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    headers = AUTH if headers is None else headers
    if isinstance(body, bytes):
        return httpx.post(server.url + path, content=body, headers=headers, timeout=60)
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _assert_healthy(server: SimpleNamespace) -> None:
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
    ok = _post(server, "/v1/classify", {"model": "serve-tc", "input": "goal match team"})
    assert ok.status_code == 200, ok.text


# ------------------------------------------------------------------------------------------ contracts
def test_models_list(client: "openai.OpenAI", server: SimpleNamespace) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"serve-tc", "serve-chat", "serve-completion", "serve-img", "serve-ti"}
    assert models["serve-chat"].owned_by == "tunelab" and models["serve-chat"].object == "model"
    extra = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]
    tasks = {m["id"]: (m["task"], m["endpoints"]) for m in extra}
    assert tasks["serve-tc"] == ("text-classification", ["/v1/classify", "/v1/embeddings"])
    assert tasks["serve-completion"] == ("completion", ["/v1/completions"])
    runtimes = {m["id"]: m.get("runtime") for m in extra}
    assert runtimes["serve-tc"] == "onnxruntime" and runtimes["serve-img"] == "torch"  # auto: ONNX for text only
    assert client.models.retrieve("serve-img").id == "serve-img"


def test_chat_completion(client: "openai.OpenAI") -> None:
    r = client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.model == "serve-chat" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic
    two = client.chat.completions.create(model="serve-chat", messages=[{"role": "system", "content": "be brief"},
                                                                      *CHAT], max_tokens=4, n=2, temperature=0.8,
                                         seed=1)
    assert [c.index for c in two.choices] == [0, 1]


def test_chat_prompt_is_the_runs_template(server: SimpleNamespace) -> None:
    """The server renders with the run's saved chat template, exactly as `tunelab generate` does."""
    from tunelab.lm.use import load_generator, task_for

    model = server.state.models["serve-chat"]
    _, tokenizer = load_generator(server.runs["serve-chat"])
    assert model.chat_prompt(CHAT) == task_for(server.runs["serve-chat"], tokenizer).prompt_ids(CHAT[0]["content"])
    assert "<|im_start|>assistant" in tokenizer.decode(model.chat_prompt(CHAT))


def test_chat_stream(client: "openai.OpenAI", server: SimpleNamespace) -> None:
    chunks = list(client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=6, temperature=0)
    assert streamed.strip() == whole.choices[0].message.content
    # the raw event stream: data lines of JSON, ending with data: [DONE]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60,
                      json={"model": "serve-chat", "messages": CHAT, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert len(lines) >= 3


def test_completions_and_stream(client: "openai.OpenAI") -> None:
    r = client.completions.create(model="serve-completion", prompt=["the city number 2 is", "the city"], max_tokens=5,
                                  n=2, temperature=0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both samples of one prompt agree
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    stream = list(client.completions.create(model="serve-completion", prompt="the city number 2 is", max_tokens=5,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in stream) == client.completions.create(
        model="serve-completion", prompt="the city number 2 is", max_tokens=5, temperature=0).choices[0].text
    assert stream[-1].choices[0].finish_reason in ("stop", "length")
    stopped = client.completions.create(model="serve-completion", prompt="the city number 2 is", max_tokens=8,
                                        temperature=0, stop=["i", "e"])
    assert "i" not in stopped.choices[0].text and "e" not in stopped.choices[0].text


def test_embeddings(client: "openai.OpenAI", server: SimpleNamespace) -> None:
    texts = ["goal match team score", "laptop software chip code server app", "rain"]
    r = client.embeddings.create(model="serve-tc", input=texts)  # the client asks for base64 and decodes it
    assert r.object == "list" and [d.index for d in r.data] == [0, 1, 2] and r.usage.prompt_tokens > 0
    vectors = np.array([d.embedding for d in r.data])
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    floats = _post(server, "/v1/embeddings", {"model": "serve-tc", "input": texts[1], "encoding_format": "float"}).json()
    assert np.allclose(floats["data"][0]["embedding"], vectors[1], atol=1e-5)  # batched == alone
    # the reference: mean-pooled last hidden state of the fine-tuned encoder, L2-normalised
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = server.runs["serve-tc"] / "model"
    tok, enc = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.allclose(ref, vectors, atol=1e-4)


def test_classify_text_matches_tunelab_predict(server: SimpleNamespace) -> None:
    from tunelab.evaluate.predict import predict_inputs

    texts = ["goal match team score coach", "laptop software chip code server", "rain storm sunny"]
    body = _post(server, "/v1/classify", {"model": "serve-tc", "input": texts}).json()
    assert body["object"] == "list" and body["model"] == "serve-tc" and body["usage"]["prompt_tokens"] > 0
    expected = predict_inputs(server.runs["serve-tc"], texts)
    for row, ref in zip(body["data"], expected):
        assert row["label"] == ref["label"] and row["score"] == pytest.approx(ref["score"], abs=1e-5)
        assert set(row["scores"]) == {"sports", "weather", "tech"} and sum(row["scores"].values()) == pytest.approx(1)
    # long texts are cut to the run's max_length (32) exactly as in training, whether or not the fast prefix
    # tokenization applies (words at the cut, no whitespace at all, newlines)
    words = ["goal", "laptop", "rain", "match", "chip", "storm", "the", "very"]
    long = [" ".join(words[(j * 7 + j // 3) % 8] for j in range(400)), "goalmatch" * 300, "rain\nstorm " * 200,
            " ".join(words) * 60]
    body = _post(server, "/v1/classify", {"model": "serve-tc", "input": long}).json()
    expected = predict_inputs(server.runs["serve-tc"], long)
    assert [r["score"] for r in body["data"]] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    assert body["usage"]["prompt_tokens"] <= 32 * len(long)
    one = _post(server, "/v1/classify", {"model": "serve-tc", "input": texts[0], "top_k": 1}).json()["data"]
    assert len(one) == 1 and list(one[0]["scores"]) == [one[0]["label"]]


def test_torch_runtime_gives_the_onnx_answers(server: SimpleNamespace) -> None:
    """The same run served with --runtime torch answers as the default (ONNX Runtime) server does."""
    from fastapi.testclient import TestClient

    texts = ["goal match team score coach", "laptop software chip code server", "rain storm sunny", "goal"]
    onnx_scores = _post(server, "/v1/classify", {"model": "serve-tc", "input": texts}).json()["data"]
    onnx_emb = _post(server, "/v1/embeddings", {"model": "serve-tc", "input": texts,
                                               "encoding_format": "float"}).json()["data"]
    app = create_app([server.runs["serve-tc"]], ServeSettings(allow_worse=True, db="none", runtime="torch"))
    with TestClient(app) as local:
        assert local.get("/v1/models").json()["data"][0]["runtime"] == "torch"
        torch_scores = local.post("/v1/classify", json={"model": "serve-tc", "input": texts}).json()["data"]
        torch_emb = local.post("/v1/embeddings", json={"model": "serve-tc", "input": texts,
                                                       "encoding_format": "float"}).json()["data"]
    for a, b in zip(onnx_scores, torch_scores):
        assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    assert np.allclose([d["embedding"] for d in onnx_emb], [d["embedding"] for d in torch_emb], atol=1e-5)


def test_int8_is_checked_on_held_out_texts(serve_runs: dict[str, Path]) -> None:
    """--quantize int8 starts only when the int8 model agrees with the float one on the run's validation texts."""
    from fastapi.testclient import TestClient

    from tunelab.run import RunError

    run = serve_runs["serve-tc"]
    with pytest.raises(RunError, match=r"not close enough to the float one: int8 on \d+ validation texts"):
        create_app([run], ServeSettings(allow_worse=True, db="none", quantize="int8", min_int8_agreement=1.01))
    app = create_app([run], ServeSettings(allow_worse=True, db="none", quantize="int8", min_int8_agreement=0.0,
                                          max_int8_metric_drop=1.0))
    served = app.state.tunelab.models["serve-tc"]
    check = served.quant_check
    assert check.split == "validation" and check.texts > 0 and 0.0 <= check.agreement <= 1.0
    with TestClient(app) as local:
        model = local.get("/v1/models").json()["data"][0]
        assert model["runtime"] == "onnxruntime-int8" and "validation texts" in model["runtime_check"]
        rows = local.post("/v1/classify", json={"model": "serve-tc", "input": ["goal match team", "rain"]}).json()["data"]
    assert [r["label"] in {"sports", "weather", "tech"} for r in rows] == [True, True]
    assert all(sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-4) for r in rows)


def test_runtime_onnx_is_refused_for_image_runs(serve_runs: dict[str, Path]) -> None:
    from tunelab.run import RunError

    with pytest.raises(RunError, match="serves text classifiers on the CPU only"):
        create_app([serve_runs["serve-img"]], ServeSettings(allow_worse=True, db="none", runtime="onnx"))


def test_encoder_input_cap(server: SimpleNamespace) -> None:
    """Classifier and embedding inputs are cut to the run's max_length; the cap bounds what the model reads."""
    model = server.state.models["serve-tc"]
    ids, counts = model.tokenize(["goal " * 50, "rain"], cap=32)
    assert counts == [32, 3] and [len(x) for x in ids] == counts
    with pytest.raises(ValueError) as err:
        model.tokenize(["rain", "goal " * 50], cap=8)
    assert err.value.args[0] == 1 and "limit is 8" in err.value.args[1]


def test_classify_images_and_pairs(server: SimpleNamespace, tiny_images: dict) -> None:
    from tunelab.evaluate.predict import predict_inputs

    paths = [tiny_images["fresh"]["red"][0], tiny_images["fresh"]["blue"][1]]
    body = _post(server, "/v1/classify", {"model": "serve-img", "images": [_b64(p) for p in paths]}).json()
    expected = predict_inputs(server.runs["serve-img"], images=[str(p) for p in paths])
    assert [r["label"] for r in body["data"]] == [r["label"] for r in expected]
    assert body["data"][0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
    as_items = _post(server, "/v1/classify", {"model": "serve-img", "input": [
        {"image": "data:image/png;base64," + _b64(paths[0]), }]}).json()
    assert as_items["data"][0]["score"] == pytest.approx(body["data"][0]["score"], abs=1e-6)
    texts = ["goal match team score coach 7", "laptop software chip code 8"]
    pairs = _post(server, "/v1/classify", {"model": "serve-ti", "input": [
        {"text": t, "image": _b64(paths[0])} for t in texts]}).json()
    expected = predict_inputs(server.runs["serve-ti"], texts=texts, images=[str(paths[0])] * 2)
    assert [r["score"] for r in pairs["data"]] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    zipped = _post(server, "/v1/classify", {"model": "serve-ti", "input": texts, "images": [_b64(paths[0])] * 2}).json()
    assert [r["label"] for r in zipped["data"]] == [r["label"] for r in pairs["data"]]


# ---------------------------------------------------------------------------------------------- safety
ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/serve-tc"), ("GET", "/metrics"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
          ("POST", "/v1/classify"), ("GET", "/no-such-route")]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_route_but_health_needs_a_key(server: SimpleNamespace, method: str, path: str) -> None:
    body = {"model": "serve-tc", "input": "goal"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.request(method, server.url + path, headers=headers, json=body if method == "POST" else None)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    r = httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {OTHER_KEY}"},
                      json=body if method == "POST" else None)
    assert r.status_code != 401


def test_health_needs_no_key(server: SimpleNamespace) -> None:
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": 5}


def _chat_body(**kw: object) -> dict:
    return {"model": "serve-chat", "messages": CHAT, **kw}


BAD = [  # (route, body, status, param)
    ("/v1/chat/completions", _chat_body(n=0), 400, "n"),
    ("/v1/chat/completions", _chat_body(n=3), 400, "n"),  # over max_n
    ("/v1/chat/completions", _chat_body(max_tokens=17), 400, "max_tokens"),  # over the cap
    ("/v1/chat/completions", _chat_body(temperature=-1), 400, "temperature"),
    ("/v1/chat/completions", _chat_body(top_p=1.5), 400, "top_p"),
    ("/v1/chat/completions", _chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("/v1/chat/completions", _chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("/v1/chat/completions", {"model": "serve-chat"}, 400, "messages"),
    ("/v1/chat/completions", _chat_body(messages=[{"role": "user", "content": "x " * 300}]), 400, "messages"),
    ("/v1/chat/completions", _chat_body(messages=[*CHAT, {"role": "assistant", "content": "ok"}]), 400, "messages"),
    ("/v1/chat/completions", {"model": "serve-tc", "messages": CHAT}, 400, "model"),  # a classifier
    ("/v1/chat/completions", {"model": "gpt-4", "messages": CHAT}, 404, "model"),
    ("/v1/completions", {"model": "serve-chat", "prompt": "x"}, 400, "model"),  # a chat run
    ("/v1/completions", {"model": "serve-completion", "prompt": [1, 2, 3]}, 400, "prompt.0"),
    ("/v1/completions", {"model": "serve-completion", "prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/embeddings", {"model": "serve-tc"}, 400, "input"),
    ("/v1/embeddings", {"model": "serve-tc", "input": ""}, 400, "input"),
    ("/v1/embeddings", {"model": "serve-tc", "input": "goal", "dimensions": 8}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "serve-img", "input": "goal"}, 400, "model"),
    ("/v1/classify", {"model": "serve-tc"}, 400, "input"),
    ("/v1/classify", {"model": "serve-tc", "input": []}, 400, "input"),
    ("/v1/classify", {"model": "serve-tc", "input": ["goal"] * 257}, 400, "input"),
    ("/v1/classify", {"model": "serve-tc", "input": ["goal", "goalmatch" * 20_000]}, 400, "input[1]"),  # no word break
    ("/v1/classify", {"model": "serve-tc", "input": "goal", "top_k": 0}, 400, "top_k"),
    ("/v1/classify", {"model": "serve-img", "input": "goal"}, 400, "input[0]"),  # needs an image
    ("/v1/classify", {"model": "serve-img", "images": ["/etc/passwd"]}, 400, "images[0]"),  # never a path
    ("/v1/classify", {"model": "serve-img", "images": [base64.b64encode(b"not an image").decode()]}, 400, "images[0]"),
    ("/v1/classify", {"model": "serve-img", "input": [{"path": "/etc/passwd"}]}, 400, "input.0.path"),
    ("/v1/classify", {"model": "serve-ti", "images": ["AAAA"]}, 400, "images[0]"),  # text missing
    ("/v1/classify", {"model": "serve-tc", "input": "goal", "images": ["AAAA"]}, 400, "input[0]"),
    ("/v1/classify", {"model": ["serve-tc"], "input": "goal"}, 400, "model"),
    ("/v1/classify", [1, 2], 400, None),
]


@pytest.mark.parametrize("route, body, status, param", BAD, ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)])
def test_bad_requests_are_4xx_with_an_openai_error(server: SimpleNamespace, route: str, body: dict, status: int,
                                                   param: str | None) -> None:
    r = _post(server, route, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_malformed_and_oversized_bodies(server: SimpleNamespace) -> None:
    for raw in (b"{bad json", b"", b"[1, 2", b'{"model": NaN}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        r = _post(server, "/v1/classify", raw)
        assert r.status_code in (400, 413), (raw[:20], r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    big = json.dumps({"model": "serve-tc", "input": "goal " * 60_000}).encode()  # 300 kB > 256 kB
    r = _post(server, "/v1/classify", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while read
        yield b'{"model": "serve-tc", "input": "'
        for _ in range(40):
            yield b"goal " * 2000
        yield b'"}'

    r = httpx.post(server.url + "/v1/classify", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Length: abc\r\n\r\n{}".encode())
        assert sock.recv(4096).split(b" ")[1] == b"400"  # refused by the HTTP layer or by us: never a 500
    assert httpx.put(server.url + "/v1/classify", headers=AUTH).status_code == 405
    assert httpx.get(server.url + "/nowhere", headers=AUTH).json()["error"]["code"] == "not_found"
    _assert_healthy(server)


def test_timeout_is_a_504_and_the_server_recovers(server: SimpleNamespace) -> None:
    settings = server.state.settings
    before = settings.timeout_s
    settings.timeout_s = 0.001
    try:
        r = _post(server, "/v1/chat/completions", _chat_body(max_tokens=16))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        r = _post(server, "/v1/chat/completions", _chat_body(max_tokens=16, stream=True))
        assert r.status_code == 504 or r.text.rstrip().endswith("data: [DONE]")
    finally:
        settings.timeout_s = before
    _assert_healthy(server)


def test_client_leaving_mid_stream(server: SimpleNamespace) -> None:
    since = time.time()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60,
                      json=_chat_body(max_tokens=16, stream=True)) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk, then hang up
    _assert_healthy(server)
    deadline = time.time() + 30
    while not any(row["status"] in (200, 499) for row in _rows(server, model="serve-chat", since=since)):
        assert time.time() < deadline, "the stream was never logged"
        time.sleep(0.2)


def test_bad_requests_leave_the_server_healthy(server: SimpleNamespace, client: "openai.OpenAI") -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="serve-chat", messages=CHAT, n=0)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    _assert_healthy(server)
    assert client.chat.completions.create(model="serve-chat", messages=CHAT, max_tokens=2).choices


def test_pickle_weights_are_refused(server: SimpleNamespace, tmp_path: Path) -> None:
    from tunelab.serve.models import UnsafeWeights

    run = tmp_path / "pickled"
    shutil.copytree(server.runs["serve-tc"], run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "model" / "model.safetensors").rename(run / "model" / "pytorch_model.bin")
    with pytest.raises(UnsafeWeights, match="pickle"):
        create_app([run], ServeSettings(allow_worse=True, db="none"))


# ------------------------------------------------------------------------------- batching, log, metrics
def test_concurrent_requests_share_model_calls(server: SimpleNamespace) -> None:
    batcher = server.state.models["serve-tc"].batcher
    before, wait = batcher.batches, batcher.max_wait_s
    batcher.max_wait_s = 0.25  # a generous window so the test does not depend on the machine's speed

    async def fire() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"model": "serve-tc", "input": f"goal {i}"})
                                        for i in range(16)))
            return [r.status_code for r in rs]

    try:
        statuses = asyncio.run(fire())
    finally:
        batcher.max_wait_s = wait
    assert statuses == [200] * 16
    assert batcher.batches - before < 16  # several requests per model call


def _rows(server: SimpleNamespace, **kw: object) -> list[dict]:
    server.state.writer.flush()
    return server.state.store.query(**kw)


def test_request_log(server: SimpleNamespace) -> None:
    since = time.time() - 1
    text = "log me please goal match"
    body = _post(server, "/v1/classify", {"model": "serve-tc", "input": text}).json()
    _post(server, "/v1/classify", {"model": "serve-tc", "input": ["goal", "rain"]})
    _post(server, "/v1/chat/completions", _chat_body(max_tokens=3, temperature=0))
    _post(server, "/v1/classify", {"model": "nope", "input": "x"})
    rows = _rows(server, since=since)
    one = next(r for r in rows if r["input"] == text)
    assert one["model"] == "serve-tc" and one["route"] == "/v1/classify" and one["status"] == 200
    assert one["input_hash"] == hashlib.sha256(text.encode()).hexdigest() and one["input_tokens"] > 0
    assert one["label"] == body["data"][0]["label"] and one["score"] == pytest.approx(body["data"][0]["score"])
    assert json.loads(one["scores"]) == pytest.approx(body["data"][0]["scores"])
    assert json.loads(one["output"])[0]["label"] == one["label"] and one["latency_ms"] > 0 and one["error"] is None
    multi = next(r for r in rows if r["input"] == '["goal","rain"]')
    assert multi["label"] is None and len(json.loads(multi["scores"])) == 2
    chat = next(r for r in rows if r["route"] == "/v1/chat/completions" and r["ts"] >= since and r["status"] == 200)
    assert json.loads(chat["input"]) == CHAT and isinstance(json.loads(chat["output"])[0], str)
    missing = next(r for r in rows if r["model"] == "nope")
    assert missing["status"] == 404 and missing["output"] == "null" and "not found" in missing["error"]
    streamed = [r for r in _rows(server, model="serve-chat") if r["status"] == 200]
    assert streamed and all(r["latency_ms"] > 0 for r in streamed)


def test_no_log_inputs_stores_only_a_hash(serve_runs: dict[str, Path], tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from tunelab.serve.store import RequestStore

    db = f"sqlite:///{tmp_path / 'hashed.db'}"
    app = create_app([serve_runs["serve-tc"]], ServeSettings(allow_worse=True, db=db, log_inputs=False))
    text = "a secret goal match"
    with TestClient(app) as c:  # no keys configured: open
        assert c.post("/v1/classify", json={"model": "serve-tc", "input": text}).status_code == 200
        assert c.post("/v1/embeddings", json={"model": "serve-tc", "input": [text, "rain"]}).status_code == 200
    rows = RequestStore(db).query()  # the lifespan's end flushed the writer
    assert [r["route"] for r in rows] == ["/v1/classify", "/v1/embeddings"]
    assert all(r["input"] is None for r in rows)
    assert rows[0]["input_hash"] == hashlib.sha256(text.encode()).hexdigest() and rows[0]["label"]
    assert json.loads(rows[1]["output"]) == {"embeddings": 2, "dimensions": 32}


def test_metrics(server: SimpleNamespace) -> None:
    _post(server, "/v1/classify", {"model": "serve-tc", "input": "goal"})
    _post(server, "/v1/embeddings", {"model": "serve-tc", "input": "goal"})
    _post(server, "/v1/classify", {"model": "serve-tc"})
    httpx.get(server.url + "/v1/models")  # 401
    r = httpx.get(server.url + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    def value(name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert value("tunelab_requests_total", route="/v1/classify", model="serve-tc", status="200") >= 1
    assert value("tunelab_requests_total", route="/v1/embeddings", model="serve-tc", status="200") >= 1
    assert value("tunelab_requests_total", route="/v1/classify", model="serve-tc", status="400") >= 1
    assert value("tunelab_request_errors_total", route="/v1/models", status="401") >= 1
    assert value("tunelab_request_latency_seconds_count", route="/v1/classify", model="serve-tc") >= 1
    assert value("tunelab_batch_size_count", model="serve-tc", kind="encode") >= 1
    assert value("tunelab_batch_size_count", model="serve-chat", kind="generate") >= 1
    assert value("tunelab_tokens_total", model="serve-chat", kind="completion") >= 1
    assert re.search(r'tunelab_request_latency_seconds_bucket\{le="0.005",model="serve-tc",route="/v1/classify"\}',
                     text)
