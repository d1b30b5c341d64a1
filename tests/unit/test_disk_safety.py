"""Where a run may write and what a full or read-only disk does: names confined to output.dir, clear errors that
name the path, the previous checkpoint intact and no partial files under final names.

The disk-full and read-only cases mount a small tmpfs, which needs root; elsewhere they skip and say why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.run.disk import DiskError, check_output_dir, confined_run_dir, run_name_problem
from tunelab.run.errors import RunError
from tunelab.run.files import atomic_dir, write_text
from tunelab.spec import SpecError, load_spec
from tunelab.train.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import fill_disk, tmpfs  # noqa: E402


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs."""
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        yield disk


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        yield disk


@pytest.mark.parametrize("name", ["../../escaped_run", "/tmp/abs", "a/b", "..", ".", "a\\b", ""])
def test_unsafe_run_names_are_refused_in_the_spec(tmp_path: Path, name: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"task": "text-classification", "name": name, "data": {"train": "x.csv"}}))
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "s.yaml" in str(e.value) and "name" in str(e.value)
    assert run_name_problem(name) is not None


def test_name_given_later_is_validated_too(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"task": "text-classification", "data": {"train": "x.csv"}}))
    run_spec = load_spec(spec)
    with pytest.raises(ValueError, match="not allowed"):
        run_spec.name = "../outside"  # what `--name ../outside` does
    assert run_spec.run_dir() == Path("runs") / "s"


def test_overwrite_cannot_follow_a_link_out_of_output_dir(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "linked").symlink_to(outside)
    with pytest.raises(RunError, match="symbolic link"):
        confined_run_dir(runs, "linked")
    assert (outside / "keep.txt").read_text() == "keep"


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(DiskError, match=r"runs is a file, not a folder"):
        check_output_dir(tmp_path / "runs" / "deeper")


def test_read_only_output_dir(read_only_disk: Path) -> None:
    with pytest.raises(DiskError, match="not writable"):
        check_output_dir(read_only_disk / "runs")
    with pytest.raises(DiskError, match=str(read_only_disk)):
        write_text(read_only_disk / "run.json", "{}")


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 3))


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(small_disk: Path) -> None:
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    first = save_checkpoint(small_disk, "step-0000001", model, {"epoch": 0, "global_step": 1}, opt)
    fill_disk(small_disk, leave=20_000)  # less than one checkpoint (~50 KB of weights and moments)
    opt.step()
    with pytest.raises(DiskError) as e:
        save_checkpoint(small_disk, "step-0000002", model, {"epoch": 0, "global_step": 2}, opt)
    message = str(e.value)
    assert "no space left on the device" in message and "step-0000002" in message and "needs about" in message
    assert "--resume" in message
    latest = checkpoint_path(small_disk)
    assert latest == first
    assert load_checkpoint(latest, _tiny_model(), torch.optim.AdamW(_tiny_model().parameters()))["global_step"] == 1
    leftovers = [p.name for p in (small_disk / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no partial folder, nothing under a final name but complete checkpoints


def test_full_disk_in_an_atomic_write_names_the_path(small_disk: Path) -> None:
    fill_disk(small_disk, leave=4096)
    with pytest.raises(DiskError, match="report.html: no space left"):
        write_text(small_disk / "report.html", "x" * 200_000)
    assert not (small_disk / "report.html").exists()
    with pytest.raises(DiskError, match="no space left"):
        with atomic_dir(small_disk / "model") as tmp:
            (tmp / "model.safetensors").write_bytes(b"\0" * 200_000)
    assert not (small_disk / "model").exists()
    assert [p.name for p in small_disk.iterdir()] == ["filler"]
