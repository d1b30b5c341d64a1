"""`tunelab serve RUN [RUN ...]`: the command, as a typer-compatible function (register it with
``app.command("serve")(serve)``), and `run_server` for scripts."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, List, Optional

import typer

_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_threads() -> int:
    """Compute threads for serving: the CPUs this process may use. Measured on 2 cores (docs/benchmarks.md),
    two threads beat one even though the event loop shares the cores, because idle compute threads sleep
    (OMP_WAIT_POLICY=PASSIVE, ONNX Runtime without spinning) instead of spinning on them."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def server_config(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> Any:
    """The uvicorn.Config that serves APP (an app from `create_app`): its HTTP protocol closes connections
    whose headers or body arrive slower than the app's settings allow (`tunelab.serve.protocol`)."""
    import uvicorn

    from tunelab.serve.protocol import deadline_protocol

    state = app.state.tunelab
    http = deadline_protocol(state.settings.header_timeout_s, state.settings.body_timeout_s,
                             lambda phase: state.metrics.read_timeouts.labels(phase).inc())
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                          timeout_graceful_shutdown=10, http=http)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve APP (an app from `create_app`) with uvicorn until interrupted."""
    import uvicorn

    uvicorn.Server(server_config(app, host, port, log_level)).run()


def serve(
    runs: List[Path] = typer.Argument(..., help="Finished run directories; each is served as a model named after "
                                      "its folder (runs/bbc-news -> model 'bbc-news')."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default accepts connections from this machine "
                             "only; use 0.0.0.0 to expose the server (and set --api-key)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: Optional[List[str]] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on every "
                                                "route but /health; repeatable. Keys in the TUNELAB_API_KEYS "
                                                "environment variable (comma-separated) are added."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the request log (e.g. sqlite:///requests.db or "
                                     "postgresql+psycopg://user@host/db). Default: requests.db beside the first "
                                     "run's folder (runs/requests.db); 'none' turns the log off."),
    no_log_inputs: bool = typer.Option(False, "--no-log-inputs", help="Store only a sha256 of each request's inputs "
                                       "in the request log, not the inputs."),
    max_batch_size: int = typer.Option(16, min=1, help="Most items (texts, images, generation requests) per model "
                                       "call."),
    max_wait_ms: float = typer.Option(5.0, min=0.0, help="How long the first item of a batch waits for more."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, min=1024, help="Largest request body; larger gets 413."),
    max_input_tokens: int = typer.Option(2048, min=1, help="Most tokens the model reads per prompt (generation) or "
                                         "per text (classifiers and embeddings first cut texts to the run's "
                                         "max_length, as in training); more gets 400."),
    max_tokens: int = typer.Option(512, min=1, help="Cap on max_tokens for generation (also the chat default)."),
    max_n: int = typer.Option(4, min=1, help="Cap on n (choices per prompt)."),
    timeout_s: float = typer.Option(60.0, min=0.001, help="Per-request time limit in seconds; 504 after it."),
    header_timeout: float = typer.Option(10.0, min=0.001, help="Seconds a client has to send a request's headers "
                                         "(from connecting, or from the previous response); slower gets 408 and "
                                         "the connection closed (slowloris)."),
    body_timeout: float = typer.Option(30.0, min=0.001, help="Seconds a client has to send a request's body once "
                                       "its headers are in (a deadline: trickling bytes does not extend it); "
                                       "slower gets 408 and the connection closed."),
    max_batch_tokens: int = typer.Option(512, min=0, help="On the CPU, run a text batch in sub-batches of at most "
                                         "this many padded tokens (faster per text: activations stay in cache); "
                                         "0: never split."),
    threads: Optional[int] = typer.Option(None, min=1, help="Compute threads for the model calls (ONNX Runtime: "
                                          "that many single-threaded calls at once). Default: the CPUs available."),
    runtime: str = typer.Option("auto", help="How text classifiers run on the CPU: auto (ONNX Runtime when the "
                                "model's ONNX export gives the same outputs as PyTorch; "
                                "else PyTorch), onnx (required: fail if it cannot be used), torch."),
    quantize: Optional[str] = typer.Option(None, help="int8: serve text classifiers through an int8 ONNX Runtime "
                                           "model (less CPU per text). It is checked at start-up on the run's "
                                           "held-out texts and refused unless it gives the float model's label on "
                                           ">= 99% of them and loses <= 0.01 of the run's metric."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug, info, warning, error)."),
    allow_worse: bool = typer.Option(False, "--allow-worse", help="Serve runs that were not promoted (their "
                                     "fine-tuned model does not beat the untuned baseline; run.json status "
                                     "not-promoted). Refused by default."),
) -> None:
    """Serve runs over HTTP: OpenAI-compatible chat, completions and embeddings, plus /v1/classify."""
    from rich.console import Console

    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings, keys_from_env

    err = Console(stderr=True, soft_wrap=True)
    from tunelab.serve.settings import RUNTIMES

    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"{runtime!r} is not one of {', '.join(RUNTIMES)}", param_hint="--runtime")
    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"{quantize!r}: the only quantization is int8", param_hint="--quantize")
    if quantize and runtime == "torch":
        raise typer.BadParameter("--quantize int8 runs on ONNX Runtime; drop --runtime torch", param_hint="--quantize")
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the event loop needs the cores
    import torch

    torch.set_num_threads(threads or default_threads())
    keys = tuple(dict.fromkeys([*(api_key or []), *keys_from_env()]))
    if not _is_loopback(host) and not keys:
        err.print(f"[bold yellow]warning:[/] serving on {host} without an API key: anyone who can reach this port "
                  "can use the models; set --api-key or TUNELAB_API_KEYS", highlight=False)
    settings = ServeSettings(api_keys=keys, db=db, log_inputs=not no_log_inputs, max_batch_size=max_batch_size,
                             max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes, max_input_tokens=max_input_tokens,
                             max_tokens=max_tokens, max_n=max_n, timeout_s=timeout_s,
                             header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                             max_batch_tokens=max_batch_tokens, runtime=runtime, threads=torch.get_num_threads(),
                             quantize=quantize, allow_worse=allow_worse)
    app = create_app(list(runs), settings)
    state = app.state.tunelab
    for name, model in state.models.items():
        runtime = getattr(model, "runtime", "torch")
        note = getattr(model, "runtime_note", "")
        err.print(f"serving [bold]{name}[/] ({model.task_name}, {runtime}): {', '.join(model.routes)}"
                  + (f"\n  {note}" if note else ""), highlight=False)
    from sqlalchemy.engine import make_url

    log = make_url(state.store.url).render_as_string(hide_password=True) if state.store is not None else "off"
    err.print(f"request log: {log}{' (inputs hashed)' if no_log_inputs else ''}; auth: {'on' if keys else 'off'}; "
              f"torch threads: {torch.get_num_threads()}; http://{host}:{port}", highlight=False)
    run_server(app, host, port, log_level)
