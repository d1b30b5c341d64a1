"""Load test: tunelab serve vs a naive one-request-at-a-time server, same model, same texts, same machine.

What: two servers, each in its own process on a free loopback port, are loaded in turn by N concurrent
clients (aiohttp, or httpx with --client httpx; one request in flight per client, one text per request) for M
seconds:
  naive    FastAPI + uvicorn, a sync endpoint calling transformers.pipeline("text-classification",
           model=<run>/model) behind a threading.Lock (the obvious way to put a model behind HTTP), with the
           run's max_length as truncation, so both servers do the same work per text.
  tunelab  tunelab.serve.create_app([run]) with its defaults (micro-batching up to 16 texts, 5 ms max wait,
           the SQLite request log on, the model run by ONNX Runtime after its export is verified against
           PyTorch), POST /v1/classify.
  tunelab-int8 (with --int8-arm) the same with --quantize int8 (checked on the run's validation texts at start).
  tunelab-torch (with --torch-arm) the same with --runtime torch: what the batching alone buys.
Both use the HTTP stack uvicorn picks in this environment and the same number of compute threads (--threads;
default what `tunelab serve` picks: the CPUs available). The client runs in this process, so it shares
the machine's cores with the server under test; that cost is the same per request for both arms. The arms
alternate for --rounds rounds (the load of other jobs drifts) and the medians are reported.

Reported per arm: requests, errors (non-200 answers and transport errors), p50/p99 latency, throughput
(successful requests per second of the timed window, after a warm-up), and for tunelab the mean batch size
from its /metrics. The two servers' labels are compared on the first 32 texts as a sanity check.

Model: a text-classification run (default runs/bench-bbc). When it is missing, it is trained first from
examples/news/spec.yaml (the bundled MiniLM on BBC News, ~3 min on 2 cores); --train-limit N trains on N
examples and one epoch instead (faster, for a smoke run; the serving speed does not depend on accuracy).
Texts: the bundled BBC News articles (via tunelab's data reader).

    python benchmarks/serve.py --run runs/bench-bbc --concurrency 16 --duration 20 --rounds 3 \
        --json-out benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- the servers
def naive_app(run: Path, max_length: int) -> Any:
    from fastapi import FastAPI, Request
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run / "model"), device="cpu")
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(body: dict) -> dict:  # sync: runs in uvicorn's thread pool, one model call at a time
        with lock:
            out = clf(body["input"], truncation=True, max_length=max_length)
        return {"label": out[0]["label"], "score": out[0]["score"]}

    return app


def serve_main(kind: str, run: Path, port: int, threads: int, db: str) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    from tunelab.run import load_run_spec

    max_length = load_run_spec(run).data.max_length
    if kind == "naive":
        app = naive_app(run, max_length)
    else:
        from tunelab.serve import ServeSettings, create_app

        runtime = "torch" if kind == "tunelab-torch" else "auto"
        quantize = "int8" if kind == "tunelab-int8" else None

        app = create_app([run], ServeSettings(db=db, threads=threads, runtime=runtime, quantize=quantize))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, run: Path, threads: int, db: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--run", str(run), "--port", str(port), "--db", db,
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {kind} server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass  # deliberate: the server is still starting; poll again below
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the {kind} server did not start in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------------------ the load
def request_of(kind: str, model: str, text: str) -> tuple[str, dict]:
    if kind == "naive":
        return "/classify", {"input": text}
    return "/v1/classify", {"model": model, "input": text}


def label_of(kind: str, body: dict) -> str:
    return body["label"] if kind == "naive" else body["data"][0]["label"]


async def load(kind: str, url: str, model: str, texts: list[str], concurrency: int, duration: float,
               warmup: float, client_lib: str = "aiohttp") -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counts = {"ok": 0, "sent": 0}
    if client_lib == "aiohttp":  # the lighter client (C HTTP parser): less of the shared CPU goes to the load generator
        import aiohttp

        session: Any = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=concurrency),
                                             timeout=aiohttp.ClientTimeout(total=120))
        failures: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)

        async def post(path: str, body: dict) -> int:
            async with session.post(path, json=body) as r:
                await r.read()
                return r.status
    else:
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        session = httpx.AsyncClient(base_url=url, limits=limits, timeout=120)
        failures = (httpx.HTTPError,)

        async def post(path: str, body: dict) -> int:
            return (await session.post(path, json=body)).status_code

    async with session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                path, body = request_of(kind, model, rng.choice(texts))
                t = time.perf_counter()
                try:
                    status = await post(path, body)
                    ok, why = status == 200, f"http {status}"
                except failures as err:
                    ok, why = False, type(err).__name__
                done = time.perf_counter()
                if t >= measure_from and done <= stop_at:
                    counts["sent"] += 1
                    if ok:
                        counts["ok"] += 1
                        latencies.append(done - t)
                    else:
                        errors[why] = errors.get(why, 0) + 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None
    return {"requests": counts["sent"], "ok": counts["ok"], "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
            "throughput_rps": counts["ok"] / duration}


def labels(kind: str, url: str, model: str, texts: list[str]) -> list[str]:
    import httpx

    out = []
    for t in texts:
        path, body = request_of(kind, model, t)
        out.append(label_of(kind, httpx.post(url + path, json=body, timeout=120).json()))
    return out


def tunelab_batches(url: str, model: str) -> dict[str, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        for name in ("tunelab_batch_size_sum", "tunelab_batch_size_count"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    count = values.get("tunelab_batch_size_count", 0.0)
    return {"model_calls": count, "mean_batch_size": values.get("tunelab_batch_size_sum", 0.0) / count if count else 0.0}


# ------------------------------------------------------------------------------------------ the run
def ensure_run(run: Path, train_limit: int | None) -> Path:
    if (run / "model" / "config.json").is_file():
        return run
    from tunelab.recipes import fine_tune
    from tunelab.spec import load_spec

    print(f"{run} not found: training it from examples/news/spec.yaml"
          + (f" (limit {train_limit}, 1 epoch)" if train_limit else ""), flush=True)
    spec = load_spec(ROOT / "examples" / "news" / "spec.yaml")
    spec.name, spec.output.dir = run.name, str(run.parent)
    if train_limit:
        spec.data.limit, spec.training.epochs = train_limit, 1
    return fine_tune(spec).dir


def bench_texts(n: int = 512) -> list[str]:
    from tunelab.data import read_source

    texts = [t for t in read_source("bbc-news", "text", "label")["text"] if t.strip()]
    random.Random(0).shuffle(texts)
    return texts[:n]


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "torch_default_threads": torch.get_num_threads()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass  # deliberate: optional machine fact or clean-up; the benchmark runs without it
    return info


def run_arms(run: Path, model: str, texts: list[str], args: argparse.Namespace, threads: int,
             tmp: str) -> dict[str, Any]:
    arms = ["naive", "tunelab"] + (["tunelab-int8"] if args.int8_arm else []) + (["tunelab-torch"] if args.torch_arm else [])
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in arms}
    agreement: dict[str, float] = {}
    reference: list[str] = []
    for rnd in range(args.rounds):
        for kind in arms:
            db = f"sqlite:///{Path(tmp) / f'requests-{kind}-{threads}-{rnd}.db'}" if kind != "naive" else "none"
            proc, url = start_server(kind, run, threads, db)
            try:
                if rnd == 0:
                    got = labels(kind, url, model, texts[:32])
                    if kind == "naive":
                        reference = got
                    else:
                        agreement[kind] = sum(a == b for a, b in zip(reference, got)) / len(got)
                print(f"torch threads {threads}, round {rnd + 1}: {kind}: {args.concurrency} clients for "
                      f"{args.duration:.0f} s ...", flush=True)
                result = asyncio.run(load(kind, url, model, texts, args.concurrency, args.duration, args.warmup,
                                          args.client))
                result["load_avg_1m_after"] = os.getloadavg()[0]
                if kind != "naive":
                    result.update(tunelab_batches(url, model))
                results[kind].append(result)
                print(json.dumps(result), flush=True)
            finally:
                stop_server(proc)

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        keys = ("throughput_rps", "p50_ms", "p99_ms")
        return {**{k: statistics.median([r[k] for r in rows if r[k] is not None]) for k in keys},
                "errors": sum(r["errors"] for r in rows), "requests": sum(r["requests"] for r in rows)}

    out: dict[str, Any] = {"torch_threads": threads, "label_agreement_first_32": agreement, "rounds_detail": results}
    naive = out["naive"] = summary(results["naive"])
    for kind in arms[1:]:
        out[kind] = summary(results[kind])
        ratios = [t["throughput_rps"] / n["throughput_rps"] for n, t in zip(results["naive"], results[kind])
                  if n["throughput_rps"]]
        suffix = "" if kind == "tunelab" else "_" + kind.replace("-", "_")
        out["throughput_speedup" + suffix] = (out[kind]["throughput_rps"] / naive["throughput_rps"]
                                              if naive["throughput_rps"] else None)
        out["speedup_per_round" + suffix] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-bbc")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="timed seconds per arm (after --warmup)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the arms this many times (load drifts)")
    ap.add_argument("--threads", default=None, help="torch threads in both servers; several as 1,2 (default: what "
                    "`tunelab serve` picks: the CPUs available)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of both servers (PASSIVE: idle "
                    "OpenMP threads sleep instead of spinning on cores the event loop needs; '' leaves it unset)")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the load generator's HTTP "
                    "client (aiohttp: lighter on the shared CPU)")
    ap.add_argument("--torch-arm", action="store_true", help="also load tunelab serve with --runtime torch (PyTorch "
                    "instead of ONNX Runtime for the model calls)")
    ap.add_argument("--int8-arm", action="store_true", help="also load tunelab serve with --quantize int8")
    ap.add_argument("--serve", choices=("naive", "tunelab", "tunelab-torch", "tunelab-int8"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve_main(args.serve, args.run, args.port, int(args.threads), args.db)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # inherited by the server processes
    if args.threads is None:
        from tunelab.serve.cli import default_threads

        thread_counts = [default_threads()]
    else:
        thread_counts = [int(t) for t in str(args.threads).split(",")]
    run = ensure_run(args.run, args.train_limit)
    model = run.resolve().name
    texts = bench_texts()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        configs = [run_arms(run, model, texts, args, threads, tmp) for threads in thread_counts]
    report = {"benchmark": "serve", "run": str(run), "model": model, "concurrency": args.concurrency,
              "client": args.client,
              "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds, "texts": len(texts),
              "omp_wait_policy": args.omp_wait_policy or None, "machine": machine(),
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "configs": configs,
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(json.dumps([{k: v for k, v in c.items() if k != "rounds_detail"} for c in configs], indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
