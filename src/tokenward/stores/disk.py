"""Durable file writes and cross-process file locks, shared by the file-backed stores.

The JSON, dotenv and SQLite stores all keep secrets in files of their own: each is created
0600 in a directory created 0700 (`make_private_dir`), replaced atomically and durably
(`atomic_write`: temp file, fsync, `os.replace`, directory fsync, so a crash leaves the old or the
new bytes, invariant 7), and guarded by an `flock` on a sidecar that is never replaced
(`FileLock`; see `stores/file.py` for why the data file itself cannot carry the lock).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "FileLock",
    "atomic_write",
    "fsync_dir",
    "make_private_dir",
    "read_bytes",
    "sweep_temp_files",
]

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) readable by the owner only, if it does not exist."""
    if not directory.exists():
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE, durable: bool = True) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the new bytes.

    The temp file is created 0600 by `mkstemp` (never world-readable, even briefly) and only then
    given `mode`. With `durable`, the data and the rename are fsync'ed before returning.
    """
    path = Path(os.path.realpath(path))  # through a symlink: keep the link, replace its target
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def sweep_temp_files(path: Path, older_than: float = 60.0) -> int:
    """Remove temp files `atomic_write` left behind when a writer was killed mid-write (they
    hold secrets). Only old ones: a fresh one may belong to a write in progress."""
    path = Path(os.path.realpath(path))
    cutoff = time.time() - older_than
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
                removed += 1
    return removed


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class FileLock:
    """An exclusive lock across threads (a `threading.Lock`) and processes (`flock` on a sidecar
    file that is never replaced). Not reentrant."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        import fcntl  # POSIX only; imported here so that importing tokenward works everywhere

        with self._thread_lock:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock
