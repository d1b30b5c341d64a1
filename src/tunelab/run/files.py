"""Crash-safe writes into a run directory.

Every file a later step reads is written atomically: to a temporary name first, flushed to disk, then
renamed into place. A kill at any moment leaves either the old version or the new one, never half of
each.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.run.disk import as_disk_error


def _fsync_tree(path: Path) -> None:
    for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def write_text(path: Path, text: str) -> None:
    """Write TEXT to PATH atomically. A full or read-only disk is a DiskError naming PATH (tunelab.run.disk),
    and leaves the previous version of PATH as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # a read-only file system refuses even this
            tmp.unlink(missing_ok=True)
        problem = as_disk_error(e, path, len(text.encode("utf-8")))
        if problem is None:
            raise
        raise problem from e


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@contextlib.contextmanager
def atomic_dir(final: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces FINAL in one rename, on failure it is removed. A full
    or read-only disk is a DiskError naming FINAL and the space needed (NEEDED bytes when the caller knows,
    else at least what was written before the failure)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        problem = as_disk_error(e, final, needed)
        if problem is None:
            raise
        raise problem from e
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException as e:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        problem = as_disk_error(e, final, needed or written or None)
        if problem is None:
            raise
        raise problem from e
