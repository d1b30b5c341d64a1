"""monitor_run without a model: a generative run gets serving-health checks only; files and HTML are written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from sqlalchemy import MetaData, create_engine, insert

from tunelab.monitor.log import requests_table
from tunelab.monitor.report import monitor_run


def test_generative_run_gets_health_checks_and_a_report(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "bot"
    run.mkdir(parents=True)
    (tmp_path / "chat.jsonl").write_text("{}\n")
    spec = {"name": "bot", "task": "chat", "model": {"base": "x"}, "data": {"train": str(tmp_path / "chat.jsonl")},
            "monitor": {"latency_p99_ms": 500}}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    engine = create_engine(f"sqlite:///{tmp_path / 'runs' / 'requests.db'}")
    meta = MetaData()
    table = requests_table(meta)
    meta.create_all(engine)
    now = time.time()
    messages = json.dumps([{"role": "user", "content": "hello there"}])
    with engine.begin() as conn:
        conn.execute(insert(table), [{"ts": now - i, "model": "bot", "route": "/v1/chat/completions", "status": 200,
                                      "latency_ms": 100.0 + 20 * i, "input": messages, "input_hash": "h",
                                      "output": "[\"hi\"]"} for i in range(40)])
    engine.dispose()
    report = monitor_run(run)  # default db: runs/requests.db
    checks = {c["name"]: c for c in report["checks"]}
    assert "support text-classification" in checks["embedding_drift"]["details"]["skipped"]
    assert checks["latency_p99_ms"]["alert"] and checks["latency_p99_ms"]["threshold"] == 500
    assert not checks["error_rate"]["alert"]
    assert [a["name"] for a in report["alerts"]] == ["latency_p99_ms"]
    folder = Path(report["files"]["folder"])
    assert folder.parent == run / "monitoring" and folder.name.endswith("Z")
    assert json.loads((folder / "monitor.json").read_text())["requests"]["total"] == 40
    html = (folder / "monitor.html").read_text()
    assert "latency_p99_ms" in html and "data:image/png;base64," in html
    # a second report in the same second gets its own folder
    assert Path(monitor_run(run)["files"]["folder"]) != folder
