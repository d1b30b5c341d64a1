"""The routes, registered on an app by `register_routes`: /health, /metrics, /v1/models[/{id}] and the four
model routes, each model route run through `_model_route` (body limit, JSON, timeout, errors as OpenAI-style
4xx/5xx, the request log and the metrics' model label).

The handlers themselves live in `routes_openai` and `routes_classify`; this module only wires them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse

from tunelab.serve.errors import APIError
from tunelab.serve.inputs import _parse_json, _read_body
from tunelab.serve.middleware import _gone
from tunelab.serve.routes_classify import _classify
from tunelab.serve.routes_openai import _chat, _completions, _embeddings
from tunelab.serve.state import RequestRecord, ServerState
from tunelab.serve.store import hash_input

logger = logging.getLogger("tunelab.serve")


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
    except ClientDisconnect:  # the client went away (or sent too slowly) before its body was in: not our error
        err = _gone(request.scope)
        rec.fail(err)
        return err.response()  # not delivered; the status is for the request log and the metrics
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


def register_routes(app: FastAPI, state: ServerState) -> None:
    """Add every route to APP; the handlers read STATE (the one `create_app` stores as ``app.state.tunelab``)."""
    models = state.models

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
