"""Reading the request log (SQLAlchemy Core on a temp SQLite file) and --since parsing."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from sqlalchemy import MetaData, create_engine, insert

from tunelab.data import DataError
from tunelab.monitor.log import (default_db_url, input_texts, parse_since, predictions, read_requests,
                                 requests_table)


def _db(path, rows):
    engine = create_engine(f"sqlite:///{path}")
    meta = MetaData()
    table = requests_table(meta)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"route": "/v1/classify", "status": 200, "latency_ms": 10.0, "input_hash": "h",
                                      **r} for r in rows])
    engine.dispose()
    return f"sqlite:///{path}"


def test_parse_since_forms():
    now = 1_800_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since(None) is None and parse_since(12.5) == 12.5
    assert parse_since("2026-11-27T10:00Z") == datetime(2026, 11, 27, 10, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-11-27") == datetime(2026, 11, 27).timestamp()  # local midnight
    assert parse_since("2026-11-27T10:00") == datetime(2026, 11, 27, 10).timestamp()
    with pytest.raises(DataError, match="24h, 7d"):
        parse_since("yesterday")


def test_read_filters_by_model_and_since(tmp_path):
    url = _db(tmp_path / "r.db", [{"ts": 3.0, "model": "a", "input": "x"}, {"ts": 1.0, "model": "a", "input": "y"},
                                  {"ts": 2.0, "model": "b", "input": "z"}])
    rows = read_requests(url, model="a")
    assert [r["input"] for r in rows] == ["y", "x"] and rows[0]["label"] is None
    assert [r["input"] for r in read_requests(url, model="a", since=2.0)] == ["x"]
    assert len(read_requests(url)) == 3


def test_missing_log_is_a_clear_error_and_not_created(tmp_path):
    path = tmp_path / "nope.db"
    with pytest.raises(DataError, match="no request log at"):
        read_requests(f"sqlite:///{path}")
    assert not path.exists()
    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    with pytest.raises(DataError, match="no 'requests' table"):
        read_requests(f"sqlite:///{empty}")
    with pytest.raises(DataError, match="not a database URL"):
        read_requests("not a url")


def test_default_db_url_is_next_to_the_run(tmp_path):
    assert default_db_url(tmp_path / "runs" / "r1") == f"sqlite:///{(tmp_path / 'runs' / 'requests.db').resolve()}"


def test_inputs_and_predictions_of_a_row():
    assert input_texts(None) == [] and input_texts("hello [world]") == ["hello [world]"]
    assert input_texts(json.dumps(["a", "b"])) == ["a", "b"]
    assert input_texts(json.dumps([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])) == ["hi"]
    assert input_texts("[not json") == ["[not json"]
    assert predictions({"label": "x", "score": 0.9}) == [("x", 0.9)]
    multi = {"label": None, "score": None, "output": json.dumps([{"label": "a", "score": 0.7, "scores": {}},
                                                                 {"label": "b", "score": 0.6}])}
    assert predictions(multi) == [("a", 0.7), ("b", 0.6)]
    assert predictions({"output": json.dumps({"predictions": [{"label": "c", "score": 0.5}]})}) == [("c", 0.5)]
    assert predictions({"output": json.dumps({"embedding": [0.1]})}) == []
