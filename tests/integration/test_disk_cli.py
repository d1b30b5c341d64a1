"""`tunelab train` against a full disk, an output.dir that is a file, and a run name that tries to leave
output.dir: exit code 2 (tunelab.run.exitcodes.USER_ERROR), one line naming the path, no traceback, nothing
written outside output.dir and no partial files."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import tunelab, write_spec

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import fill_disk, tmpfs  # noqa: E402


def test_full_disk_during_training_is_a_clear_error(tiny_assets: dict, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        spec = write_spec(tmp_path / "full.yaml", tiny_assets, output={"dir": str(disk / "runs")})
        fill_disk(disk, leave=200_000)  # room for the spec and reports, not for a checkpoint (~360 KB)
        res = tunelab("train", str(spec))
        assert res.returncode == 2, res.stderr[-3000:]
        assert "no space left on the device" in res.stderr and str(disk) in res.stderr
        assert "Traceback" not in res.stderr
        partial = [p for p in (disk / "runs").rglob("*") if ".tmp-" in p.name]
        assert partial == []
        assert not (disk / "runs" / "full" / "model").exists()


def test_output_dir_that_is_a_file(tiny_assets: dict, tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file")
    spec = write_spec(tmp_path / "f.yaml", tiny_assets, output={"dir": str(tmp_path / "runs")})
    res = tunelab("train", str(spec))
    assert res.returncode == 2 and "is a file, not a folder" in res.stderr and "Traceback" not in res.stderr


def test_run_name_cannot_leave_output_dir(tiny_assets: dict, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    spec = write_spec(tmp_path / "work" / "n.yaml", tiny_assets)
    res = tunelab("train", str(spec), "--name", "../../escaped_run", "--overwrite")
    assert res.returncode == 2 and "not allowed" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "escaped_run").exists() and not (tmp_path / "work" / "escaped_run").exists()
