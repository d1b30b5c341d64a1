"""The request log: RequestStore on SQLite, and on a throw-away PostgreSQL cluster when one can be started.

Without PostgreSQL the cluster test skips, except under CI: `.ci/run` installs PostgreSQL and sets
TUNELAB_REQUIRE_POSTGRES=1, and then a cluster that cannot be started fails the test, so a silent skip cannot
hide that the PostgreSQL store went untested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

from tunelab.serve.store import COLUMNS, RequestStore, StoreWriter, default_url, hash_input

EXPECTED = ("id", "ts", "model", "route", "status", "latency_ms", "input", "input_hash", "input_tokens", "output",
            "label", "score", "scores", "error")


def _exercise(store: RequestStore) -> None:
    store.log(model="bbc", route="/v1/classify", status=200, latency_ms=12.5, input="goal match",
              input_tokens=4, output=[{"label": "sport", "score": 0.9}], label="sport", score=0.9,
              scores={"sport": 0.9, "tech": 0.1}, ts=1000.0)
    store.log(model="bbc", route="/v1/classify", status=200, latency_ms=3.0, input=["a", "b"], output=[], ts=2000.0)
    store.log(model="chat", route="/v1/chat/completions", status=400, latency_ms=1.0, input=None,
              input_hash=hash_input(b"{bad"), error="bad json", ts=3000.0)
    rows = store.query()
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) == 3
    assert set(rows[0]) == set(EXPECTED)
    first = rows[0]
    assert first["input"] == "goal match" and first["input_hash"] == hashlib.sha256(b"goal match").hexdigest()
    assert first["label"] == "sport" and first["score"] == pytest.approx(0.9) and first["input_tokens"] == 4
    assert json.loads(first["scores"]) == {"sport": 0.9, "tech": 0.1}
    assert json.loads(first["output"])[0]["label"] == "sport"
    assert json.loads(rows[1]["input"]) == ["a", "b"]  # multi-input: a JSON list
    assert rows[2]["input"] is None and rows[2]["output"] == "null" and rows[2]["error"] == "bad json"
    assert rows[2]["input_hash"] == hashlib.sha256(b"{bad").hexdigest()
    assert [r["ts"] for r in store.query(model="bbc")] == [1000.0, 2000.0]
    assert [r["model"] for r in store.query(since=1500.0)] == ["bbc", "chat"]
    assert store.query(model="bbc", since=1500.0)[0]["ts"] == 2000.0
    assert store.query(model="nobody") == []


def test_columns_are_the_agreed_ones() -> None:
    assert COLUMNS == EXPECTED


def test_sqlite_store(tmp_path: Path) -> None:
    store = RequestStore(f"sqlite:///{tmp_path / 'deep' / 'requests.db'}")  # parent folders are created
    _exercise(store)
    store.close()
    again = RequestStore(f"sqlite:///{tmp_path / 'deep' / 'requests.db'}")  # existing table reused
    assert len(again.query()) == 3


def test_log_needs_input_or_hash(tmp_path: Path) -> None:
    store = RequestStore(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(ValueError):
        store.log(model="m", route="/v1/classify", status=200, latency_ms=1.0)


def test_writer_thread_writes_and_flushes(tmp_path: Path) -> None:
    store = RequestStore(f"sqlite:///{tmp_path / 'r.db'}")
    writer = StoreWriter(store)
    from tunelab.serve.store import _row

    for i in range(50):
        writer.submit(_row("m", "/v1/embeddings", 200, float(i), input=f"text {i}", output={"embeddings": 1}))
    writer.flush()
    assert len(store.query(model="m")) == 50
    writer.close()


def test_default_url_is_beside_the_runs(tmp_path: Path) -> None:
    assert default_url(tmp_path / "runs" / "bbc") == f"sqlite:///{(tmp_path / 'runs' / 'requests.db').resolve()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POSTGRES_BINARIES = ("initdb", "pg_ctl", "postgres")


def _unavailable(reason: str) -> NoReturn:
    """Skip the PostgreSQL test, or fail it when TUNELAB_REQUIRE_POSTGRES=1 (set by .ci/run)."""
    if os.environ.get("TUNELAB_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"TUNELAB_REQUIRE_POSTGRES=1 but the PostgreSQL test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _debian_version(bin_dir: Path) -> int:
    return int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0


def postgres_bin_dir() -> Path | None:
    """The first folder holding initdb, pg_ctl and postgres together: where PATH finds initdb, /usr/local/bin,
    or Debian's /usr/lib/postgresql/<version>/bin (newest first; Debian keeps these binaries off PATH)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates.append(Path("/usr/local/bin"))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_debian_version, reverse=True)
    return next((d for d in candidates if all((d / name).is_file() for name in POSTGRES_BINARIES)), None)


@pytest.fixture()
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL cluster in a temp folder on a free loopback port (as the 'postgres' user when run as root)."""
    try:
        import psycopg  # noqa: F401 - the driver the URL below names
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev]')")
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _unavailable("PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH, in /usr/local/bin or in "
                     "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")
    bins = {name: str(bin_dir / name) for name in POSTGRES_BINARIES}
    prefix: list[str] = []
    root = tmp_path_factory.mktemp("pg")
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the cluster")
        if not runuser:
            _unavailable("running as root without runuser")
        prefix = [runuser, "-u", "postgres", "--"]
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for parent in root.parents:  # the postgres user must be able to reach the folder
            if str(parent) in ("/", "/tmp"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    data, port = root / "data", _free_port()
    init = subprocess.run([*prefix, bins["initdb"], "-D", str(data), "-U", "tunelab", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        _unavailable(f"initdb failed: {init.stderr[-300:]}")
    start = subprocess.run([*prefix, bins["pg_ctl"], "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                            f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True, timeout=90)
    if start.returncode != 0:
        _unavailable(f"postgres did not start: {start.stderr[-300:]}")
    try:
        yield f"postgresql+psycopg://tunelab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, bins["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                       timeout=60)


def test_postgres_store(postgres_url: str) -> None:
    started = time.time()
    store = RequestStore(postgres_url)
    _exercise(store)
    store.close()
    assert time.time() - started < 60


def test_missing_postgres_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI a missing PostgreSQL skips; with TUNELAB_REQUIRE_POSTGRES=1 (.ci/run) it fails instead."""
    monkeypatch.delenv("TUNELAB_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        _unavailable("no initdb")
    monkeypatch.setenv("TUNELAB_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="TUNELAB_REQUIRE_POSTGRES=1 but .*no initdb"):
        _unavailable("no initdb")
