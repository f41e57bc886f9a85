"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees half a file, and a failed write (disk full, read-only target, Ctrl-C)
leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bench.errors import TwinbenchError

# Errors that mean "this place cannot take the file now", not a bug of ours.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        # Disk full, a read-only or forbidden folder: one line for the user, not a traceback.
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
        raise TwinbenchError(f"{path}: cannot write ({exc.strerror}{where}); {kept}: free disk space or "
                             f"choose a writable folder, then run again") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """A JSON-safe copy: NaN and infinities become null (JSON has neither), numpy scalars Python
    numbers, tuples lists. Every record writer stores through this."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    # Straight into the temporary file: through a BytesIO a 300 MB checkpoint was copied twice
    # more in memory (1.5 s against 0.85 s on 2 cores).
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write ``path`` with ``writer(tmp_path)`` (for libraries that want a path)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def create_unique_dir(out: str | os.PathLike, prefix: str) -> Path:
    """A new ``out/<prefix>-YYYYmmdd-HHMMSS-xxxx`` directory. ``mkdir`` fails rather than share
    a directory with another run started at the same second, so nothing is ever overwritten."""
    import secrets
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        run_dir = out / time.strftime(f"{prefix}-%Y%m%d-%H%M%S-{secrets.token_hex(2)}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    from bench.errors import UserError

    raise UserError(f"{out}: could not create a new run directory there")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the block: two processes
    writing one thing (the demo data, a node's image cache) wait for each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
