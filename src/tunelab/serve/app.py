"""The HTTP application: OpenAI-compatible routes over tunelab runs, plus /v1/classify, /health, /metrics.

    app = create_app(["runs/bbc-news"], ServeSettings(api_keys=("secret",)))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (model routes take the run's folder name as ``model``):

* ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus text), ``GET /v1/models[/{id}]``
* ``POST /v1/chat/completions`` (chat runs, rendered with the run's own chat template), ``POST /v1/completions``
  (completion runs); both with ``stream: true`` as server-sent events ending ``data: [DONE]``
* ``POST /v1/embeddings`` (text-classification runs), ``POST /v1/classify`` (every classifier run)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from tunelab.serve.errors import APIError
from tunelab.serve.metrics import ServeMetrics
from tunelab.serve.models import ClassifierModel, EncoderItem, GeneratorModel, GenJob, ServedModel, load_model
from tunelab.serve.schemas import (ChatRequest, ClassifyItem, ClassifyRequest, CompletionRequest, EmbeddingRequest,
                                   parse)
from tunelab.serve.settings import ServeSettings
from tunelab.serve.store import RequestStore, StoreWriter, _row, canonical_input, default_url, hash_input

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


# ---------------------------------------------------------------------------------------- middleware
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


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise APIError(400, f"the request body is not valid JSON ({str(err)[:200]})", code="invalid_json") from None


# ------------------------------------------------------------------------------------------ helpers
def _now() -> int:
    return int(time.time())


def _decode_image(value: str, mode: str, max_pixels: int) -> tuple[Any, bytes]:
    """(PIL image, raw bytes) from base64 (or a data: URL). Never treats the value as a path."""
    from PIL import Image

    from tunelab.vision.transforms import load_image

    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ValueError("a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64; send the image file's bytes base64-encoded (file paths are not read)") from None
    if not data:
        raise ValueError("the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds of error for bad bytes
        raise ValueError(f"not a readable image ({type(err).__name__})") from None
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} pixels is over this server's limit of {max_pixels} pixels")
    try:
        return load_image(io.BytesIO(data), mode), data
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"not a readable image ({type(err).__name__})") from None


def _text_list(value: str | list[str], param: str, settings: ServeSettings) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise APIError(400, f"'{param}' must not be empty", param=param, code="invalid_value")
    if len(texts) > settings.max_inputs:
        raise APIError(400, f"{len(texts)} inputs in one request; this server takes at most {settings.max_inputs}",
                       param=param, code="too_many_inputs")
    return texts


def _tokenize(served: ClassifierModel, texts: list[str], params: list[str], settings: ServeSettings
              ) -> tuple[list[list[int]], int]:
    try:
        ids, _ = served.tokenize(texts, settings.max_input_tokens)
    except ValueError as err:
        i, reason = err.args
        raise APIError(400, f"'{params[i]}' {reason}", param=params[i], code="context_length_exceeded") from None
    return ids, sum(len(x) for x in ids)


@dataclass
class _Sampling:
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    include_usage: bool
    seed: int | None


def _sampling(req: Any, max_tokens: int | None, default_max: int, settings: ServeSettings) -> _Sampling:
    bad = req.unsupported()
    if bad:
        raise APIError(400, f"'{bad[0]}' is not supported by tunelab serve", param=bad[0], code="unsupported_parameter")
    n = req.n or 1
    if n > settings.max_n:
        raise APIError(400, f"n={n} is over this server's limit of {settings.max_n}", param="n", code="invalid_value")
    max_tokens = max_tokens or min(default_max, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens}",
                       param="max_tokens", code="invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop) or any(len(s) > 256 for s in stop):
        raise APIError(400, "'stop' takes up to 4 non-empty strings (256 characters at most)", param="stop",
                       code="invalid_value")
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    return _Sampling(n, max_tokens, temperature, 1.0 if req.top_p is None else float(req.top_p), stop,
                     bool(req.stream), bool(req.stream_options and req.stream_options.include_usage), req.seed)


def _check_prompt(served: GeneratorModel, prompt: list[int], max_tokens: int, param: str,
                  settings: ServeSettings) -> None:
    if not prompt:
        raise APIError(400, f"'{param}' is empty", param=param, code="invalid_value")
    if len(prompt) > settings.max_input_tokens:
        raise APIError(400, f"'{param}' has {len(prompt)} tokens; this server's limit is {settings.max_input_tokens}",
                       param=param, code="context_length_exceeded")
    if served.context and len(prompt) + max_tokens > served.context:
        raise APIError(400, f"{len(prompt)} prompt tokens + max_tokens={max_tokens} exceed the model's context of "
                       f"{served.context} tokens", param="max_tokens", code="context_length_exceeded")


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------------------- routes
async def _classify(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(ClassifyRequest, body)
    served = state.model_for(req.model, "/v1/classify", rec)
    assert isinstance(served, ClassifierModel)
    if req.input is None and not req.images:
        raise APIError(400, "missing required parameter 'input' (texts or items) or 'images'", param="input",
                       code="missing_required_parameter")
    raw: list[Any] = [] if req.input is None else ([req.input] if isinstance(req.input, str) else list(req.input))
    items = [ClassifyItem(text=x) if isinstance(x, str) else x for x in raw]
    params = [f"input[{i}]" for i in range(len(items))]
    if req.images is not None:
        if not req.images:
            raise APIError(400, "'images' must not be empty", param="images", code="invalid_value")
        if not items:
            items, params = [ClassifyItem(image=b) for b in req.images], [f"images[{i}]" for i in range(len(req.images))]
        elif len(items) == len(req.images) and all(it.image is None for it in items):
            items = [ClassifyItem(text=it.text, image=b) for it, b in zip(items, req.images)]
        else:
            raise APIError(400, "give 'images' alone, or with one text per image in 'input'", param="images",
                           code="invalid_value")
    if not items:
        raise APIError(400, "'input' must not be empty", param="input", code="invalid_value")
    if len(items) > settings.max_inputs:
        raise APIError(400, f"{len(items)} inputs in one request; this server takes at most {settings.max_inputs}",
                       param="input", code="too_many_inputs")
    what = {"text": "texts", "image": "images", "text+image": "a text and an image per input"}[served.input_kind]
    for it, p in zip(items, params):
        for kind, needed in (("text", served.needs_text), ("image", served.needs_image)):
            value = getattr(it, kind)
            if needed and value is None:
                raise APIError(400, f"'{p}' has no {kind}; model '{served.name}' ({served.task_name}) takes {what}",
                               param=p, code="invalid_value")
            if not needed and value is not None:
                raise APIError(400, f"'{p}' has an {kind}; model '{served.name}' ({served.task_name}) takes {what}",
                               param=p, code="invalid_value")
    images: list[Any] = [None] * len(items)
    logged: list[Any] = [it.text for it in items]
    if served.needs_image:
        def decode_all() -> list[tuple[Any, bytes]]:
            out = []
            for it, p in zip(items, params):
                try:
                    out.append(_decode_image(it.image, served.image_mode, settings.max_image_pixels))
                except ValueError as err:
                    raise APIError(400, f"'{p}': {err}", param=p, code="invalid_image") from None
            return out

        decoded = await asyncio.to_thread(decode_all)
        images = [im for im, _ in decoded]
        logged = [{**({"text": it.text} if it.text is not None else {}),
                   "image_sha256": hashlib.sha256(data).hexdigest(), "image_bytes": len(data)}
                  for it, (_, data) in zip(items, decoded)]
    rec.set_input(logged[0] if len(logged) == 1 else logged, settings.log_inputs)
    ids: list[Any] = [None] * len(items)
    if served.needs_text:
        ids, rec.input_tokens = _tokenize(served, [it.text for it in items], params, settings)
    results = await served.batcher.submit([EncoderItem("classify", i, im) for i, im in zip(ids, images)])
    top_k = min(req.top_k, len(served.labels)) if req.top_k else None
    predictions = [served.prediction(s, top_k) for s in results]
    rec.output = predictions
    if len(predictions) == 1:
        rec.label, rec.score, rec.scores = predictions[0]["label"], predictions[0]["score"], predictions[0]["scores"]
    else:
        rec.scores = [p["scores"] for p in predictions]
    usage = {"prompt_tokens": rec.input_tokens or 0, "total_tokens": rec.input_tokens or 0}
    return JSONResponse({"id": f"clf-{uuid.uuid4().hex}", "object": "list", "created": _now(), "model": served.name,
                         "data": [{"index": i, **p} for i, p in enumerate(predictions)], "usage": usage})


async def _embeddings(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(EmbeddingRequest, body)
    served = state.model_for(req.model, "/v1/embeddings", rec)
    assert isinstance(served, ClassifierModel)
    if req.dimensions is not None:
        raise APIError(400, "'dimensions' is not supported by tunelab serve", param="dimensions",
                       code="unsupported_parameter")
    texts = _text_list(req.input, "input", settings)
    params = ["input"] if isinstance(req.input, str) else [f"input[{i}]" for i in range(len(texts))]
    for t, p in zip(texts, params):
        if not t:
            raise APIError(400, f"'{p}' is an empty string", param=p, code="invalid_value")
    rec.set_input(texts[0] if isinstance(req.input, str) else texts, settings.log_inputs)
    ids, rec.input_tokens = _tokenize(served, texts, params, settings)
    vectors = await served.batcher.submit([EncoderItem("embed", i) for i in ids])
    dims = int(vectors[0].shape[0])
    rec.output = {"embeddings": len(vectors), "dimensions": dims}
    encode = ((lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii"))
              if req.encoding_format == "base64" else (lambda v: [float(x) for x in v]))
    return JSONResponse({"object": "list", "model": served.name,
                         "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": rec.input_tokens, "total_tokens": rec.input_tokens}})


async def _chat(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(ChatRequest, body)
    served = state.model_for(req.model, "/v1/chat/completions", rec)
    assert isinstance(served, GeneratorModel)
    sampling = _sampling(req, req.max_completion_tokens or req.max_tokens, settings.max_tokens, settings)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "the last message is the assistant's; end with a user message to get a reply",
                       param="messages", code="invalid_value")
    rec.set_input(messages, settings.log_inputs)
    try:
        prompt = served.chat_prompt(messages)
    except Exception as err:  # noqa: BLE001 - the run's template may reject a conversation (roles, order)
        raise APIError(400, f"the run's chat template rejects these messages: {str(err)[:300]}", param="messages",
                       code="invalid_value") from None
    _check_prompt(served, prompt, sampling.max_tokens, "messages", settings)
    return await _generate(state, request, served, rec, [prompt], sampling, chat=True)


async def _completions(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(CompletionRequest, body)
    served = state.model_for(req.model, "/v1/completions", rec)
    assert isinstance(served, GeneratorModel)
    sampling = _sampling(req, req.max_tokens, 16, settings)
    texts = _text_list(req.prompt, "prompt", settings)
    rec.set_input(texts[0] if isinstance(req.prompt, str) else texts, settings.log_inputs)
    prompts = [served.completion_prompt(t) for t in texts]
    for i, p in enumerate(prompts):
        _check_prompt(served, p, sampling.max_tokens, "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]",
                      settings)
    return await _generate(state, request, served, rec, prompts, sampling, chat=False)


async def _generate(state: ServerState, request: Request, served: GeneratorModel, rec: RequestRecord,
                    prompts: list[list[int]], s: _Sampling, chat: bool) -> Response:
    rec.input_tokens = sum(len(p) for p in prompts)
    job = GenJob(prompts, s.n, s.max_tokens, s.temperature > 0, s.temperature, s.top_p, s.seed)
    state.metrics.tokens.labels(served.name, "prompt").inc(rec.input_tokens * s.n)
    if s.stream:
        return await _start_stream(state, request, served, rec, job, s, chat)
    try:
        (choices,) = await served.batcher.submit([job])
    finally:
        job.cancel.set()  # no-op when done; stops the generation when this request timed out or went away
    out, finish_reasons, completion_tokens = [], [], 0
    for ids, finish in choices:
        completion_tokens += len(ids)
        text, stopped = _cut_at_stop(served.decode(ids), s.stop)
        out.append(text.strip() if chat else text)
        finish_reasons.append("stop" if stopped else finish)
    state.metrics.tokens.labels(served.name, "completion").inc(completion_tokens)
    rec.output = out
    usage = {"prompt_tokens": rec.input_tokens * s.n, "completion_tokens": completion_tokens,
             "total_tokens": rec.input_tokens * s.n + completion_tokens}
    if chat:
        return JSONResponse({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": _now(),
                             "model": served.name, "choices": [
                                 {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                                  "finish_reason": f} for i, (t, f) in enumerate(zip(out, finish_reasons))],
                             "usage": usage})
    return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": _now(),
                         "model": served.name, "choices": [
                             {"index": i, "text": t, "logprobs": None, "finish_reason": f}
                             for i, (t, f) in enumerate(zip(out, finish_reasons))], "usage": usage})


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish: str | None = None


async def _start_stream(state: ServerState, request: Request, served: GeneratorModel, rec: RequestRecord,
                        job: GenJob, s: _Sampling, chat: bool) -> Response:
    """Queue the job, wait (within the request timeout) until generation has started, then stream."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.stream = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    submitted = asyncio.ensure_future(served.batcher.submit([job]))

    def on_done(task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: the stream reports it
        events.put_nowait(("done", task))

    submitted.add_done_callback(on_done)
    try:
        first = await events.get()
    except BaseException:
        job.cancel.set()
        submitted.cancel()
        raise
    if first[0] == "done" and not first[1].cancelled() and first[1].exception() is not None:
        raise first[1].exception()
    deadline = rec.t0 + state.settings.timeout_s
    rec_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = _now()
    rows = [_Row() for _ in range(len(job.prompts) * job.n)]
    hold = max((len(x) for x in s.stop), default=1) - 1

    def chunk(index: int, delta: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}
            payload = {"id": rec_id, "object": "chat.completion.chunk", "created": created, "model": served.name,
                       "choices": [choice]}
        else:
            choice = {"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}
            payload = {"id": rec_id, "object": "text_completion", "created": created, "model": served.name,
                       "choices": [choice]}
        if s.include_usage:
            payload["usage"] = None
        return payload

    def advance(row: _Row, token: int) -> str:
        """The new text ROW can show after TOKEN (held back while it could still be the start of a stop string)."""
        if row.finish is not None:
            return ""
        if token in served.stops:
            row.finish = "stop"
        else:
            row.ids.append(token)
            text = served.decode(row.ids)
            row.text = text.lstrip() if chat else text
            row.text, stopped = _cut_at_stop(row.text, s.stop)
            if stopped:
                row.finish = "stop"
            elif len(row.ids) >= s.max_tokens:
                row.finish = "length"
            elif row.text.endswith("\ufffd"):
                return ""  # half a character: wait for the rest of its bytes
        upto = len(row.text) if row.finish else max(row.sent, len(row.text) - hold)
        delta, row.sent = row.text[row.sent:upto], upto
        return delta

    async def body() -> Any:
        status, error, event = 200, None, first
        try:
            if chat:
                for i in range(len(rows)):
                    yield _sse(chunk(i, None, None, role=True))
            while True:
                kind, value = event
                if kind == "tokens":
                    for i, (row, token) in enumerate(zip(rows, value)):
                        was_open = row.finish is None
                        delta = advance(row, token)
                        if delta:
                            yield _sse(chunk(i, delta, None))
                        if was_open and row.finish is not None:
                            yield _sse(chunk(i, None, row.finish))
                    if all(r.finish is not None for r in rows):
                        job.cancel.set()  # every row is done (stop strings): stop generating
                        break
                elif kind == "end":
                    break
                elif kind == "done":
                    task = value
                    if not task.cancelled() and task.exception() is not None:
                        err = task.exception()
                        raise err if isinstance(err, APIError) else APIError(500, "generation failed", code="server_error")
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise asyncio.TimeoutError
                event = await asyncio.wait_for(events.get(), left)
            for i, row in enumerate(rows):
                if row.finish is None:
                    row.finish = "length"
                    tail, row.sent = row.text[row.sent:], len(row.text)
                    if tail:
                        yield _sse(chunk(i, tail, None))
                    yield _sse(chunk(i, None, row.finish))
            completion = sum(len(r.ids) for r in rows)
            state.metrics.tokens.labels(served.name, "completion").inc(completion)
            if s.include_usage:
                prompt_tokens = (rec.input_tokens or 0) * s.n
                yield _sse({"id": rec_id, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": served.name, "choices": [],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                      "total_tokens": prompt_tokens + completion}})
            yield "data: [DONE]\n\n"
        except asyncio.TimeoutError:
            status, error = 504, f"the request took longer than {state.settings.timeout_s} s"
            yield _sse(APIError(504, error, code="timeout").body())
            yield "data: [DONE]\n\n"
        except APIError as err:
            status, error = err.status, err.message
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "the client closed the connection mid-stream"
            raise
        finally:
            job.cancel.set()
            rec.status, rec.error = status, error
            rec.output = [r.text for r in rows] if status == 200 else None
            state.finish(rec)
            state.metrics.in_flight.labels(rec.route).dec()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


Handler = Callable[[ServerState, Request, Any, RequestRecord], Awaitable[Response]]


async def _model_route(request: Request, route: str, handler: Handler) -> Response:
    """Body limit, JSON, validation, timeout, errors -> OpenAI-style 4xx, the request log and the metrics label."""
    state: ServerState = request.app.state.tunelab
    rec = RequestRecord(route)
    state.metrics.in_flight.labels(route).inc()
    streaming = False
    try:
        raw = await _read_body(request, state.settings.max_body_bytes)
        rec.input_hash = hash_input(raw)
        body = _parse_json(raw)
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            rec.model = body["model"][:200]
        try:
            response = await asyncio.wait_for(handler(state, request, body, rec), state.settings.timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"the request took longer than {state.settings.timeout_s} s", code="timeout") from None
        streaming = isinstance(response, StreamingResponse)
        return response
    except APIError as err:
        rec.fail(err)
        return err.response()
    except Exception:  # noqa: BLE001 - a bug or a model failure: log it, answer 500, keep serving
        logger.exception("%s failed", route)
        err = APIError(500, "internal server error", code="server_error")
        rec.fail(err)
        return err.response()
    finally:
        if rec.model in state.models:  # metrics label only for served models (bounded label set)
            request.scope["tunelab.model"] = rec.model
        if not streaming:
            state.finish(rec)
            state.metrics.in_flight.labels(route).dec()


# -------------------------------------------------------------------------------------------- the app
def load_models(runs: Sequence[str | Path], settings: ServeSettings) -> dict[str, ServedModel]:
    models: dict[str, ServedModel] = {}
    for run in runs:
        served = load_model(run, settings)
        if served.name in models:
            raise ValueError(f"two runs are named '{served.name}' ({models[served.name].run} and {run}); "
                             "serve runs whose folders have different names")
        models[served.name] = served
    return models


def create_app(runs: Sequence[str | Path], settings: ServeSettings | None = None) -> FastAPI:
    """Load RUNS (run directories; each becomes a model named after its folder) and return the app.

    The request log goes to ``settings.db`` (default: ``sqlite:///<parent of the first run>/requests.db``;
    ``"none"`` turns it off). Model workers and the log writer start with the app's lifespan."""
    settings = settings or ServeSettings()
    if not runs:
        raise ValueError("give at least one run directory to serve")
    models = load_models(runs, settings)
    url = settings.db if settings.db is not None else default_url(runs[0])
    store = None if str(url).strip().lower() in ("", "none", "off") else RequestStore(url)
    state = ServerState(settings, models, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if store is not None:
            state.writer = StoreWriter(store)
        for served in models.values():
            served.make_batcher(state.metrics).start()
        try:
            yield
        finally:
            for served in models.values():
                if served.batcher is not None:
                    await served.batcher.stop()
            if state.writer is not None:
                await asyncio.to_thread(state.writer.close)
            for served in models.values():
                served.close()

    app = FastAPI(title="tunelab serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.tunelab = state
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, state=state)
    app.add_middleware(MetricsMiddleware, state=state)  # added last: outermost, so it sees 401/413 too

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed "
                   f"on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return APIError(400, f"invalid request: {str(exc)[:300]}", code="invalid_value").response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return APIError(500, "internal server error", code="server_error").response()

    @app.get("/health")
    async def health() -> Response:
        dead = [name for name, m in models.items() if m.batcher is None or not m.batcher.alive]
        body = {"status": "degraded" if dead else "ok", "models": len(models)}
        return JSONResponse(body, status_code=503 if dead else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        for name, m in models.items():
            state.metrics.queue_depth.labels(name).set(m.batcher.pending if m.batcher else 0)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def list_models() -> Response:
        return JSONResponse({"object": "list", "data": [m.describe() for m in models.values()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id not in models:
            return APIError(404, f"model '{model_id[:200]}' not found", param="model", code="model_not_found").response()
        return JSONResponse(models[model_id].describe())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _model_route(request, "/v1/chat/completions", _chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _model_route(request, "/v1/completions", _completions)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await _model_route(request, "/v1/embeddings", _embeddings)

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        return await _model_route(request, "/v1/classify", _classify)

    return app
