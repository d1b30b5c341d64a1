"""The request log: one row per request to a model route, through SQLAlchemy 2 (SQLite by default, any
SQLAlchemy URL works, e.g. ``postgresql+psycopg://user@host/db``).

Table ``requests`` (portable column types only; JSON is stored as Text, so no dialect-specific SQL):

=============  ============  ==========================================================================
column         type          meaning
=============  ============  ==========================================================================
id             integer       primary key
ts             float         request start, epoch seconds
model          varchar(200)  run name (the model id clients send; for an unknown model, what they sent)
route          varchar(64)   e.g. ``/v1/classify``
status         integer       HTTP status (499: client went away mid-stream; 504: timed out)
latency_ms     float         time to the full response (to the last chunk when streaming)
input          text, null    the text, or a JSON list for multi-input (chat: the messages); NULL with
                             ``--no-log-inputs`` or when the body was unreadable
input_hash     varchar(64)   sha256 of the input (of the raw body when it could not be parsed)
input_tokens   integer, null tokens the model read (NULL for image-only inputs)
output         text          JSON: list of predictions / choice texts, embedding summary; ``null`` on errors
label          varchar, null top label (classifier requests with exactly one input)
score          float, null   its score
scores         text, null    JSON: label -> score (one input) or a list of those (several inputs)
error          text, null    the error message for 4xx/5xx
=============  ============  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, event, insert, select)
from sqlalchemy.engine import make_url

logger = logging.getLogger("tunelab.serve")

METADATA = MetaData()
REQUESTS = Table(
    "requests", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("model", String(200), nullable=False, index=True),
    Column("route", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("input", Text, nullable=True),
    Column("input_hash", String(64), nullable=False),
    Column("input_tokens", Integer, nullable=True),
    Column("output", Text, nullable=True),  # the server always writes it ("null" on errors); readers accept NULL
    Column("label", String(200), nullable=True),
    Column("score", Float, nullable=True),
    Column("scores", Text, nullable=True),
    Column("error", Text, nullable=True),
)
COLUMNS = tuple(c.name for c in REQUESTS.columns)


def canonical_input(value: Any) -> str:
    """The text stored (and hashed) for an input: a string as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def hash_input(value: Any) -> str:
    """sha256 (hex) of canonical_input(VALUE); bytes are hashed as they are."""
    data = value if isinstance(value, (bytes, bytearray)) else canonical_input(value).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def default_url(first_run: str | Path) -> str:
    """``sqlite:///<folder holding the first run>/requests.db`` (``runs/requests.db`` for ``runs/<name>``)."""
    return f"sqlite:///{Path(first_run).resolve().parent / 'requests.db'}"


def _row(model: str, route: str, status: int, latency_ms: float, input: Any = None, input_hash: str | None = None,
         input_tokens: int | None = None, output: Any = None, label: str | None = None, score: float | None = None,
         scores: Any = None, error: str | None = None, ts: float | None = None) -> dict[str, Any]:
    if input_hash is None:
        if input is None:
            raise ValueError("log() needs the input or its input_hash")
        input_hash = hash_input(input)
    return {"ts": float(ts if ts is not None else time.time()), "model": str(model)[:200], "route": str(route)[:64],
            "status": int(status), "latency_ms": float(latency_ms),
            "input": None if input is None else canonical_input(input), "input_hash": input_hash,
            "input_tokens": None if input_tokens is None else int(input_tokens),
            "output": json.dumps(output, ensure_ascii=False), "label": None if label is None else str(label)[:200],
            "score": None if score is None else float(score),
            "scores": None if scores is None else json.dumps(scores, ensure_ascii=False), "error": error}


class RequestStore:
    """Write and read the ``requests`` table at URL (created when missing).

    ``log`` is synchronous (a few ms on SQLite); the server calls it from a writer thread
    (`StoreWriter`), never from the event loop.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:  # readers (tunelab monitor) never block the writer
                cur = dbapi_conn.cursor()
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                except Exception:  # noqa: BLE001 - e.g. :memory:, read-only media: the default journal still works
                    pass  # deliberate: keep SQLite's default journal
                cur.close()
        METADATA.create_all(self.engine)

    def log(self, *, model: str, route: str, status: int, latency_ms: float, input: Any = None,
            input_hash: str | None = None, input_tokens: int | None = None, output: Any = None,
            label: str | None = None, score: float | None = None, scores: Any = None, error: str | None = None,
            ts: float | None = None) -> None:
        """Insert one request. INPUT is a string or a JSON-able list/dict (stored as JSON text); OUTPUT and SCORES
        are JSON-encoded; INPUT_HASH defaults to sha256 of the input (pass it, with input=None, to keep only the hash)."""
        self.log_many([_row(model, route, status, latency_ms, input, input_hash, input_tokens, output, label, score,
                            scores, error, ts)])

    def log_many(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows already shaped by `_row` (one transaction)."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(REQUESTS), rows)

    def query(self, model: str | None = None, since: float | None = None, limit: int | None = None) -> list[dict]:
        """Rows (oldest first) as dicts keyed by column name; optionally one model's, with ts >= SINCE.

        Values are returned as stored: ``input``, ``output`` and ``scores`` are JSON text (json.loads them)."""
        stmt = select(REQUESTS).order_by(REQUESTS.c.id)
        if model is not None:
            stmt = stmt.where(REQUESTS.c.model == model)
        if since is not None:
            stmt = stmt.where(REQUESTS.c.ts >= float(since))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def close(self) -> None:
        self.engine.dispose()


class StoreWriter:
    """Writes rows on its own thread so that the event loop never waits for the database.

    Rows are queued with `submit` and inserted in small transactions; a failing database is logged and
    the rows dropped (serving goes on). `flush` waits until everything queued so far is written."""

    def __init__(self, store: RequestStore, max_queue: int = 100_000) -> None:
        self.store = store
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="tunelab-request-log", daemon=True)
        self.dropped = 0
        self.failed = 0
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            row = self._queue.get()
            rows, done = ([] if row is None else [row]), row is None
            while not done and len(rows) < 256:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    rows.append(more)
            try:
                self.store.log_many(rows)
            except Exception:  # noqa: BLE001 - the log must never take the server down
                self.failed += len(rows)
                logger.exception("request log: could not write %d row(s) to %s", len(rows), self.store.url)
            for _ in range(len(rows) + (1 if done else 0)):
                self._queue.task_done()
            if done:
                return

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
