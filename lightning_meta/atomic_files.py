"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then renamed.

A process killed in the middle of :func:`write_atomically`, or a disk that fills up, never leaves a partial file
under the final name: the rename (``os.replace``) is atomic on POSIX and Windows, and the old file, if any, stays
until the new one is complete. A full disk is a :class:`DiskFull` error naming the folder and the bytes the file
needs; the temporary file is removed. A process killed with SIGKILL mid-write can leave its hidden temporary file
(``.<name>.<random>.tmp``) behind, never a file with the final name.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> write_atomically(path, lambda file: file.write(b"whole"))
    >>> path.read_bytes(), [p.name for p in path.parent.iterdir()]
    (b'whole', ['notes.txt'])
    >>> shutil.rmtree(path.parent)
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The errors of a write that does not fit: no space left, quota exceeded, file too large."""


class DiskFull(OSError):
    """A file did not fit where it was written; nothing was left under its name. ``errno`` says why (see
    :data:`FULL`); the message is one line."""

    def __init__(self, message: str, code: int = errno.ENOSPC) -> None:
        super().__init__(message)
        self.errno = code


class _Counter:
    """A write-only sink that counts the bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        self.size += len(memoryview(data).cast("B"))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush."""


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a binary file that becomes ``path`` once ``write`` returns and the bytes are on disk.

    Raises:
        DiskFull: the file did not fit (its folder, the bytes it needs and the bytes free are in the message).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        _remove(temporary)
        full = _full(error)
        if full is None:
            raise
        needed = _Counter()
        write(needed)  # type: ignore[arg-type]  # what the file takes, without writing it
        free = shutil.disk_usage(path.parent).free
        raise DiskFull(
            f"no space left for {path.name} in {path.parent}: it needs {needed.size:,} bytes, {free:,} are free "
            f"({os.strerror(full)})",
            full,
        ) from None
    _sync_folder(path.parent)


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new hidden file in ``path``'s folder, open for writing, with the permissions the umask gives a new file
    (``tempfile.mkstemp`` would make it readable by its owner only)."""
    while True:
        name = str(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"))
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def _full(error: BaseException) -> int | None:
    """The errno of a write that did not fit, in ``error`` or in the errors it was raised from or while handling
    (``torch.save`` reports a failed write as a ``RuntimeError`` of its zip writer)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (where folders can be opened, as on POSIX)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:  # some file systems refuse to sync a folder
        pass
    finally:
        os.close(handle)
