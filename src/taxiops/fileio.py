"""Durable file writes and cross-process locks, shared by intake, ml and the registry.

`write_atomically` leaves either the old file or the complete new one under its name,
even after a crash or power loss: the bytes go to a temporary file in the same folder,
which is fsynced, renamed over the target, and the folder is fsynced so the rename
itself survives. `exclusive_lock` serialises writers across processes with `flock`.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomically(path: Path, data: bytes | str, *, encoding: str = "utf-8") -> None:
    """Replace `path` with `data` (str is encoded with `encoding`) in one durable rename.

    The temporary file is `.<name>.<random>.tmp` beside `path` (a dot name, so watchers
    and readers of the folder skip it) and is removed again if anything fails. Created
    with mode 0666 less the umask, like `open`.
    """
    payload = data.encode(encoding) if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush `folder`'s entries (names created, renamed or removed in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_file` (created if missing) for the block.

    Blocks until every other holder, in any process, has let go. Raises `OSError` when
    the lock file cannot be opened.
    """
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
