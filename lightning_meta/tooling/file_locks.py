"""Advisory file locks between processes (POSIX ``flock``), for sweeps that share an output folder.

:func:`locked` waits for a lock (shared for readers, exclusive for a writer); :func:`claimed` tries to take one
without waiting and says whether it got it, and writes the holder (host and process id) into the file for whoever
finds it taken. The kernel drops a lock when its holder exits, however it exits (kill -9 included), so a dead
sweep never leaves a claim behind.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "cell.lock"
    >>> with claimed(path) as mine:
    ...     mine, holder(path) == f"{socket.gethostname()} pid {os.getpid()}"
    (True, True)
    >>> import shutil; shutil.rmtree(path.parent)
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold the lock of ``path`` (created if missing) while the block runs, waiting for it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


@contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """Try to take the lock of ``path`` without waiting; the block gets whether this process holds it (until the
    block ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(handle, 0)
        os.write(handle, f"{socket.gethostname()} pid {os.getpid()}".encode())
        yield True
    finally:
        os.close(handle)


def holder(path: Path) -> str:
    """Who took the claim of ``path`` last (``host pid N``), as written by :func:`claimed`."""
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
