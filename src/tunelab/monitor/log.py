"""The inference server's request log, read through SQLAlchemy Core (SQLite by default, or any URL).

The table is reflected rather than imported from the server's module, so `tunelab monitor` works on a log
written by any version of the server (extra columns are ignored, missing optional ones read as None).
`requests_table` defines the same schema, for tests and for tools that write the log themselves.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.data import DataError

TABLE = "requests"
COLUMNS = ("id", "ts", "model", "route", "status", "latency_ms", "input", "input_hash", "input_tokens",
           "output", "label", "score", "scores", "error")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def default_db_url(run: str | Path) -> str:
    """The log next to the run directories: sqlite:///<run>/../requests.db (what `tunelab serve` writes)."""
    return f"sqlite:///{(Path(run).resolve().parent / 'requests.db')}"


def requests_table(metadata: Any) -> Any:
    """The `requests` table exactly as the server defines it (`tunelab.serve.store.REQUESTS`), attached to
    METADATA, for writing fixtures and for other loggers: one schema, not two copies that can drift apart."""
    from tunelab.serve.store import REQUESTS

    return REQUESTS.to_metadata(metadata)


def parse_since(value: str | float | int | None, now: float | None = None) -> float | None:
    """Epoch seconds from '24h', '30m', '7d', '2w', an ISO date ('2026-11-27') or time ('2026-11-27T10:00',
    '2026-11-27 10:00:00+01:00'), or a number (already epoch seconds). ISO times without a zone are local time."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    match = _RELATIVE.match(text)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise DataError(f"--since '{value}': not a date or duration; use e.g. 24h, 7d, 2026-11-27 or "
                        "2026-11-27T10:00") from None


def _describe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used in messages
        return url


def read_requests(url: str, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """Rows of the request log, oldest first, optionally for one model (run name) and from SINCE on.

    A missing SQLite file, an unreachable database or a database without the table is a DataError that
    names the URL (password hidden) and how to fix it; a SQLite file is never created by reading.
    """
    from sqlalchemy import MetaData, Table, create_engine, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchTableError, SQLAlchemyError

    shown = _describe(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DataError(f"{url}: not a database URL; use sqlite:///path/to/requests.db or "
                        "postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            raise DataError(f"{shown}: an in-memory database holds no request log; give the server's log file")
        if not Path(database).is_file():
            raise DataError(f"no request log at {database}; start the server with logging (`tunelab serve`) or "
                            "point --db at its database")
    try:
        engine = create_engine(url)
    except (ModuleNotFoundError, ImportError) as err:
        raise DataError(f"{shown}: the database driver is not installed ({err.name or err})") from None
    try:
        with engine.connect() as conn:
            try:
                table = Table(TABLE, MetaData(), autoload_with=conn)
            except NoSuchTableError:
                raise DataError(f"{shown}: no '{TABLE}' table; is this the inference server's request log?") from None
            missing = [c for c in ("ts", "model", "status") if c not in table.c]
            if missing:
                raise DataError(f"{shown}: the '{TABLE}' table lacks column(s) {missing}; not a tunelab request log")
            query = select(table)
            if model is not None:
                query = query.where(table.c.model == model)
            if since is not None:
                query = query.where(table.c.ts >= since)
            order = [table.c.ts] + ([table.c.id] if "id" in table.c else [])
            rows = conn.execute(query.order_by(*order)).mappings().all()
    except SQLAlchemyError as err:
        raise DataError(f"{shown}: cannot read the request log: {err.__class__.__name__}: "
                        f"{str(err).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return [{c: row.get(c) for c in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS} for row in rows]


def _maybe_json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return text
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def _message_text(messages: list[dict[str, Any]]) -> str:
    """A chat request's user turns as one text."""
    parts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role", "user") == "user"]
    return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in parts if p)


def input_texts(value: str | None) -> list[str]:
    """The texts one logged input holds: a plain text, a JSON list of texts (multi-input), or chat messages.

    None (the server ran with --no-log-inputs) gives []; so does an empty string.
    """
    if value is None:
        return []
    parsed = _maybe_json(value)
    if isinstance(parsed, list):
        if parsed and all(isinstance(m, dict) and "content" in m for m in parsed):
            text = _message_text(parsed)
            return [text] if text else []
        return [x if isinstance(x, str) else json.dumps(x) for x in parsed]
    if isinstance(parsed, dict):
        if isinstance(parsed.get("messages"), list):
            text = _message_text(parsed["messages"])
            return [text] if text else []
        for key in ("input", "text", "inputs", "texts", "prompt"):
            if key in parsed:
                return input_texts(json.dumps(parsed[key]) if not isinstance(parsed[key], str) else parsed[key])
        return [value]
    return [value] if value else []


def _predictions_in(value: Any) -> list[tuple[str, float]]:
    """(label, score) pairs found in an output: a dict with label+score, a list of them, or under a key."""
    if isinstance(value, dict):
        if "label" in value and "score" in value and not isinstance(value["label"], list):
            return [(str(value["label"]), float(value["score"]))]
        for key in ("predictions", "results", "data", "outputs"):
            if isinstance(value.get(key), list):
                return _predictions_in(value[key])
        return []
    if isinstance(value, list):
        found = []
        for item in value:
            found += _predictions_in(item)
        return found
    return []


def predictions(row: dict[str, Any]) -> list[tuple[str, float]]:
    """The (top label, top score) pairs of one successful classifier request.

    The label/score columns hold them for a single input; a multi-input request keeps them in `output`.
    """
    if row.get("label") is not None and row.get("score") is not None:
        return [(str(row["label"]), float(row["score"]))]
    return _predictions_in(_maybe_json(row.get("output")))
