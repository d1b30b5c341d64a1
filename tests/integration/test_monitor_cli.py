"""tunelab monitor on a tiny trained run: quiet on in-distribution traffic, loud on shifted traffic,
min_requests, hash-only logs, --since, --feedback retraining specs and the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from pathlib import Path

import pytest
import typer
from sqlalchemy import MetaData, create_engine, insert
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import make_text_csv  # noqa: E402

from tunelab.data import DataError, read_source  # noqa: E402
from tunelab.monitor.cli import monitor  # noqa: E402
from tunelab.monitor.log import default_db_url, requests_table  # noqa: E402
from tunelab.monitor.report import monitor_run  # noqa: E402
from tunelab.run import RunError  # noqa: E402
from tunelab.spec import load_spec  # noqa: E402

DRIFT = {"input_length", "oov_rate", "embedding_drift", "label_shift", "confidence_drop"}
FOREIGN = ["quantum", "photon", "lattice", "entropy", "enzyme", "protein", "galaxy", "nebula", "tensor", "voltage"]


def write_log(path: Path, rows: list[dict]) -> str:
    engine = create_engine(f"sqlite:///{path}")
    meta = MetaData()
    table = requests_table(meta)
    meta.create_all(engine)
    base = {"route": "/v1/classify", "status": 200, "latency_ms": 20.0, "input_hash": "0" * 64, "input_tokens": None,
            "output": None, "label": None, "score": None, "scores": None, "error": None}
    with engine.begin() as conn:
        conn.execute(insert(table), [{**base, **r} for r in rows])
    engine.dispose()
    return f"sqlite:///{path}"


def served(run: Path, texts: list[str], start: float, log_inputs: bool = True) -> list[dict]:
    """Rows as the server would log them: the run's own predictions on TEXTS."""
    from tunelab.evaluate.predict import predict_texts

    rng = random.Random(0)
    rows = []
    for i, p in enumerate(predict_texts(run, texts)):
        rows.append({"ts": start + i, "model": run.name, "input": p["text"] if log_inputs else None,
                     "label": p["label"], "score": p["score"], "scores": json.dumps(p["scores"]),
                     "output": json.dumps({k: p[k] for k in ("label", "score", "scores")}),
                     "latency_ms": rng.uniform(10, 40)})
    return rows


def shifted_rows(name: str, n: int, start: float) -> list[dict]:
    """Another topic, five times longer, words the model never saw, one label, low scores, errors, slow."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        failed = i % 8 == 0
        rows.append({"ts": start + i, "model": name, "input": " ".join(rng.choices(FOREIGN, k=rng.randint(30, 45))),
                     "label": None if failed else "sports", "score": None if failed else rng.uniform(0.34, 0.4),
                     "status": 500 if failed else 200, "error": "CUDA out of memory" if failed else None,
                     "latency_ms": rng.uniform(2500, 4000)})
    return rows


@pytest.fixture(scope="module")
def mon(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tunelab.recipes import fine_tune
    from tunelab.spec import parse_spec

    root = tmp_path_factory.mktemp("monitor")
    spec = {"name": "mon", "task": "text-classification", "model": {"base": str(tiny_assets["model"])},
            "data": {"train": str(tiny_assets["data"]), "max_length": 32,
                     "split": {"validation": 0.2, "test": 0.2}},
            "training": {"epochs": 6, "batch_size": 8, "learning_rate": 5e-3}, "evaluation": {"baseline": False},
            # the tiny model keeps the epoch-2 weights (first perfect macro-F1), whose top scores average ~0.45
            # over 3 classes, so a 0.1 fall is out of reach; the spec's own threshold must be the one used
            "monitor": {"confidence_drop": 0.05},
            "output": {"dir": str(root / "runs")}}
    run = fine_tune(parse_spec(spec)).dir
    fresh = root / "fresh.csv"
    make_text_csv(fresh, n_per_class=20, seed=7)
    texts = [r["text"] for r in csv.DictReader(fresh.open())]
    now = time.time()
    return {"run": run, "root": root,
            "in_dist": write_log(root / "in_dist.db", served(run, texts, now - 3600)),
            "hash_only": write_log(root / "hash_only.db", served(run, texts, now - 3600, log_inputs=False)),
            "shifted": write_log(root / "shifted.db", shifted_rows(run.name, 48, now - 3600)),
            "few": write_log(root / "few.db", shifted_rows(run.name, 10, now - 3600)),
            "old": write_log(root / "old.db", shifted_rows(run.name, 48, now - 3 * 86400))}


def test_in_distribution_traffic_raises_no_alert(mon: dict, tmp_path: Path) -> None:
    report = monitor_run(mon["run"], mon["in_dist"], out=tmp_path / "rep")
    checks = {c["name"]: c for c in report["checks"]}
    assert not [c for c in checks.values() if c["details"].get("skipped")], checks
    assert report["alerts"] == [] and report["status"] == "ok", json.dumps(report["checks"], indent=1)
    assert report["requests"]["total"] == 60 and report["requests"]["predictions"] == 60
    assert checks["embedding_drift"]["value"] > 0.01
    assert report["reference"]["embedding_source"].startswith("held-out")
    saved = json.loads((tmp_path / "rep" / "monitor.json").read_text())
    assert saved["checks"] == json.loads(json.dumps(report["checks"]))
    html = (tmp_path / "rep" / "monitor.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "No alerts" in html
    # the reference statistics were cached in the run and are reused
    assert (mon["run"] / "monitoring" / "reference" / "reference.json").is_file()
    assert monitor_run(mon["run"], mon["in_dist"], out=tmp_path / "again")["reference"]["cached"] is True


def test_shifted_traffic_raises_every_alert(mon: dict) -> None:
    report = monitor_run(mon["run"], mon["shifted"])
    fired = {a["name"] for a in report["alerts"]}
    assert fired == DRIFT | {"error_rate", "latency_p99_ms"}, json.dumps(report["checks"], indent=1)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["confidence_drop"]["threshold"] == 0.05 and checks["input_length"]["threshold"] == 0.3
    assert checks["oov_rate"]["details"]["logged_rate"] == 1.0
    assert checks["label_shift"]["details"]["logged"]["sports"] == 1.0
    assert checks["embedding_drift"]["value"] < 0.01
    folder = Path(report["files"]["folder"])
    assert folder.parent == mon["run"] / "monitoring" and (folder / "monitor.html").is_file()
    assert "ALERT" in (folder / "monitor.html").read_text()


def test_fewer_than_min_requests_reports_without_drift_alerts(mon: dict, tmp_path: Path) -> None:
    report = monitor_run(mon["run"], mon["few"], out=tmp_path)
    assert not DRIFT & {a["name"] for a in report["alerts"]}
    for c in report["checks"]:
        if c["name"] in DRIFT:
            assert "fewer than monitor.min_requests (30)" in c["details"]["skipped"]
    assert any("min_requests" in n for n in report["notes"])
    assert {a["name"] for a in report["alerts"]} == {"error_rate", "latency_p99_ms"}  # health is checked at any traffic


def test_hash_only_log_skips_input_checks(mon: dict, tmp_path: Path) -> None:
    report = monitor_run(mon["run"], mon["hash_only"], out=tmp_path)
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("input_length", "oov_rate", "embedding_drift"):
        assert "inputs were not logged" in checks[name]["details"]["skipped"]
    assert not checks["label_shift"]["details"].get("skipped") and not checks["label_shift"]["alert"]
    assert report["requests"]["hash_only"] == 60 and report["alerts"] == []


def test_feedback_writes_a_valid_retraining_spec(mon: dict, tmp_path: Path) -> None:
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("text,label\nquantum photon goal,sports\nrain over the server room,weather\n"
                        "chip lattice code,tech\n")
    report = monitor_run(mon["run"], mon["in_dist"], feedback=feedback, out=tmp_path / "rep")
    retrain = report["retrain"]
    assert retrain["rows_added"] == 3 and retrain["original_rows"] == 120 and retrain["format"] == "csv"
    spec = load_spec(retrain["spec"])
    assert spec.name == "mon-retrain" and Path(spec.data.train) == tmp_path / "rep" / "retrain_data.csv"
    assert spec.model.base == load_spec(mon["run"] / "spec.yaml").model.base
    assert Path(spec.output.dir) == mon["run"].parent
    data = read_source(spec.data.train)
    assert len(data) == 123 and list(data["text"])[-3:][0] == "quantum photon goal"
    assert list(data["label"])[-3:] == ["sports", "weather", "tech"]


def test_feedback_with_an_unknown_label_names_the_row(mon: dict, tmp_path: Path) -> None:
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps({"text": "goal", "label": "sports"}) + "\n"
                        + json.dumps({"text": "rain", "label": "politics"}) + "\n")
    with pytest.raises(DataError, match=r"feedback.jsonl:2: unknown label 'politics'"):
        monitor_run(mon["run"], mon["in_dist"], feedback=feedback, out=tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("monitor")(monitor)
    app.command("noop")(lambda: None)  # a second command keeps `monitor` a subcommand, as in tunelab.cli
    return app


def test_cli_exit_codes(mon: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", mon["in_dist"], "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "embedding_drift" in ok.output and str(tmp_path / "a" / "monitor.html") in ok.output.replace("\n", "")
    bad = runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", mon["shifted"], "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "ALERT" in bad.output
    # --since: the old traffic is outside the last 24 hours, so nothing to alert on
    since = runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", mon["old"], "--since", "24h",
                                   "--out", str(tmp_path / "c")])
    assert since.exit_code == 0 and "no requests logged" in since.output
    assert runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", mon["old"], "--since", "4d",
                                  "--out", str(tmp_path / "d")]).exit_code == 1
    # user errors are RunError / DataError, which tunelab's main maps to exit code 2
    missing_run = runner.invoke(_app(), ["monitor", str(tmp_path / "nope")])
    assert isinstance(missing_run.exception, RunError) and "no such run" in str(missing_run.exception)
    no_db = runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert isinstance(no_db.exception, DataError) and "no request log" in str(no_db.exception)
    default = runner.invoke(_app(), ["monitor", str(mon["run"])])  # default: <runs>/requests.db, absent here
    assert isinstance(default.exception, DataError) and str(mon["run"].parent / "requests.db") in str(default.exception)
    bad_since = runner.invoke(_app(), ["monitor", str(mon["run"]), "--db", mon["old"], "--since", "soon"])
    assert isinstance(bad_since.exception, DataError)


def test_registered_cli_exit_codes(mon: dict, tmp_path: Path) -> None:
    from tunelab.cli import app

    if not any(c.name == "monitor" for c in app.registered_commands):
        pytest.skip("tunelab.cli does not register `monitor` yet")
    from conftest import tunelab

    assert tunelab("monitor", str(mon["run"]), "--db", mon["shifted"], "--out", str(tmp_path / "a")).returncode == 1
    missing = tunelab("monitor", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such run" in missing.stderr


def test_log_written_by_the_server_store(mon: dict, tmp_path: Path) -> None:
    """The server's own writer (tunelab.serve.store), single and multi-input classify requests."""
    store_mod = pytest.importorskip("tunelab.serve.store")
    from tunelab.evaluate.predict import predict_texts

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = store_mod.RequestStore(url)
    texts = ["goal match team", "rain storm wind", "laptop chip code"] * 12
    preds = [{k: p[k] for k in ("label", "score", "scores")} for p in predict_texts(mon["run"], texts)]
    for text, p in zip(texts[:30], preds[:30]):
        store.log(model=mon["run"].name, route="/v1/classify", status=200, latency_ms=25.0, input=text, output=[p],
                  label=p["label"], score=p["score"], scores=p["scores"])
    store.log(model=mon["run"].name, route="/v1/classify", status=200, latency_ms=30.0, input=texts[30:],
              output=preds[30:], scores=[p["scores"] for p in preds[30:]])  # one request, six inputs
    store.log(model=mon["run"].name, route="/v1/classify", status=422, latency_ms=1.0, input_hash="0" * 64,
              output=None, error="'input' is empty")
    store.log(model="another-run", route="/v1/classify", status=200, latency_ms=25.0, input="x", output=[])
    store.close()
    report = monitor_run(mon["run"], url, out=tmp_path / "rep")
    req = report["requests"]
    assert (req["total"], req["failed"], req["texts"], req["predictions"]) == (32, 1, 36, 36)
    assert store_mod.default_url(mon["run"]) == default_db_url(mon["run"])  # both sides agree on the default
