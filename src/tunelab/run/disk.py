"""Where a run may write, and what to say when the disk refuses.

Two promises: a run name can only ever name a folder directly inside `output.dir` (so `--overwrite`, which
deletes the run directory, can delete nothing else), and a write that fails for lack of space or permission
ends with one line naming the path, the space needed where known and the fix, never a traceback from deep
inside torch or safetensors. The writes themselves are atomic (tunelab.run.files): a failed one leaves the
previous version in place and no partial file under the final name.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tunelab.run.errors import RunError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
# safetensors reports a full disk as its own error type; its message carries the OS error's wording
NO_SPACE_WORDS = ("no space left on device", "storagefull", "disk quota exceeded")


class DiskError(RunError):
    """A write failed because the disk is full, read-only, or not ours to write to."""


def run_name_problem(name: str) -> str | None:
    """Why NAME cannot be a run name (a single folder name inside output.dir), or None when it can."""
    if not name or not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return f"'{name}' names output.dir itself or its parent"
    if "/" in name or "\\" in name or os.sep in name:
        return "it contains a path separator"
    if Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "it is an absolute path"
    if "\0" in name:
        return "it contains a NUL character"
    return None


def check_run_name(name: str) -> str:
    """NAME when it is a safe run name; otherwise a ValueError saying why and what to use instead."""
    problem = run_name_problem(name)
    if problem:
        raise ValueError(f"run name {name!r} is not allowed: {problem}. A run name is one folder name inside "
                         "output.dir (letters, digits, '-', '_', '.'); to write elsewhere, set output.dir")
    return name


def confined_run_dir(output_dir: Path, name: str) -> Path:
    """output_dir/name, refused (RunError) unless it is a real folder directly inside output_dir: the one
    guard every deletion of a run directory goes through."""
    problem = run_name_problem(name)
    if problem:
        raise RunError(f"run name {name!r} is not allowed: {problem}; use one folder name (set output.dir to "
                       "write elsewhere)")
    run_dir = output_dir / name
    if run_dir.is_symlink():
        raise RunError(f"{run_dir} is a symbolic link; tunelab does not write through or delete links. Remove the "
                       "link or choose another run name")
    return run_dir


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that is a file, or one that cannot be written, before any work starts."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise DiskError(f"{parent} is a file, not a folder; set output.dir to a folder (or remove the file)")
            if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
                raise DiskError(f"{parent} is not writable (read-only file system or no permission); set output.dir "
                                "to a writable folder or fix its permissions")
            return


def _read_only(path: Path) -> bool:
    """Whether PATH lies on a file system mounted read-only (os.access says yes to root even there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def as_disk_error(error: BaseException, path: Path, needed: int | None = None) -> DiskError | None:
    """ERROR as a DiskError naming PATH when it is a full, read-only or forbidden disk; None otherwise."""
    code = error.errno if isinstance(error, OSError) else None
    text = str(error).lower()
    if code in NO_SPACE or any(w in text for w in NO_SPACE_WORDS):
        free = _free(path)
        need = f"; this write needs about {human(needed)}" if needed else ""
        return DiskError(f"{path}: no space left on the device ({human(free)} free{need}). Free some space or set "
                         "output.dir to a larger disk; the last complete checkpoint is intact (--resume continues)")
    if code in NOT_WRITABLE:
        return DiskError(f"{path}: cannot write here ({os.strerror(code)}); set output.dir to a writable folder or "
                         "fix its permissions")
    if code in (errno.ENOTDIR, errno.EEXIST) and isinstance(error, OSError):
        return DiskError(f"{error.filename or path}: a file stands where a folder is needed; remove it or set "
                         "output.dir elsewhere")
    return None


def _free(path: Path) -> int | None:
    for p in [path, *path.parents]:
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def human(n: int | None) -> str:
    if n is None:
        return "unknown space"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
