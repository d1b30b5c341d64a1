"""The HTTP application: OpenAI-compatible routes over tunelab runs, plus /v1/classify, /health, /metrics.

    app = create_app(["runs/bbc-news"], ServeSettings(api_keys=("secret",)))
    run_server(app, "127.0.0.1", 8000)   # tunelab.serve.run_server: uvicorn, with read deadlines on connections

Routes (model routes take the run's folder name as ``model``):

* ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus text), ``GET /v1/models[/{id}]``
* ``POST /v1/chat/completions`` (chat runs, rendered with the run's own chat template), ``POST /v1/completions``
  (completion runs); both with ``stream: true`` as server-sent events ending ``data: [DONE]``
* ``POST /v1/embeddings`` (text-classification runs), ``POST /v1/classify`` (every classifier run)

This module only assembles the app: it loads the models, builds the shared state, adds the middleware and the
error handlers, and registers the routes. The pieces live beside it:

* `state`: ServerState, RequestRecord, route_label     * `middleware`: metrics, auth, body-size cap
* `inputs`: JSON, images, texts, tokens, sampling       * `streaming`: the SSE state machine
* `routes`: the wrapper every model route runs through, and `register_routes`
* `routes_openai`: embeddings, chat, completions        * `routes_classify`: /v1/classify
* `protocol`: the read deadlines on uvicorn's connections (slow clients), used by `cli.server_config`
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tunelab.serve.errors import APIError
from tunelab.serve.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from tunelab.serve.models import ServedModel, load_model
from tunelab.serve.routes import register_routes
from tunelab.serve.settings import ServeSettings
from tunelab.serve.state import RequestRecord, ServerState, route_label
from tunelab.serve.store import RequestStore, StoreWriter, default_url

__all__ = ["create_app", "load_models", "ServerState", "RequestRecord", "route_label"]

logger = logging.getLogger("tunelab.serve")


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

    register_routes(app, state)
    return app
