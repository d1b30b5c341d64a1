"""`tunelab serve`: an inference server for finished runs (FastAPI + uvicorn).

Public API::

    from tunelab.serve import ServeSettings, create_app, RequestStore
    app = create_app(["runs/bbc-news", "runs/support-chat"], ServeSettings(api_keys=("k",)))

Heavy modules (torch, transformers, fastapi) load only when these names are first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app", "RequestStore", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from tunelab.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from tunelab.serve.settings import ServeSettings

        return ServeSettings
    if name == "RequestStore":
        from tunelab.serve.store import RequestStore

        return RequestStore
    if name == "run_server":
        from tunelab.serve.cli import run_server

        return run_server
    raise AttributeError(name)
