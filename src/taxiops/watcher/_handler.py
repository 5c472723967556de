"""The watchdog handler: file events in the incoming folder become `FileTouched` for month files."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    PatternMatchingEventHandler,
)

from taxiops.errors import DataValidationError
from taxiops.tripfile import parse_trip_file
from taxiops.watcher._incoming import FileTouched, TouchKind

logger = logging.getLogger("taxiops.watcher")

# Names editors and downloaders use while a file is in flight; skipped without a log line.
# `**/` because watchdog matches patterns against the whole path.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    "**/.*",
    "**/*.tmp",
    "**/*.part",
    "**/*.partial",
    "**/*.crdownload",
    "**/*~",
)

# The events worth a check. Open / close-without-write are left out: our own reads
# of a file would otherwise wake us up again.
WATCHED_EVENT_TYPES: tuple[type[FileSystemEvent], ...] = (
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
)

_MAX_REMEMBERED_IGNORED = 10_000


class IncomingFileHandler(PatternMatchingEventHandler):
    """Hands `FileTouched` for month-file names to `sink`; logs other names once and ignores them.

    Reacts to close-after-write and to moves into the folder (the destination path);
    created / modified are the fallback for the polling observer, which sees no closes.
    `sink` runs on the observer thread and must return quickly.
    """

    def __init__(
        self,
        sink: Callable[[FileTouched], None],
        *,
        ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
        case_sensitive: bool = True,
    ) -> None:
        # ignore_policy "all": a rename from `x.part` to a month name must still count.
        super().__init__(
            patterns=None,
            ignore_patterns=list(ignore_patterns) or None,
            ignore_directories=True,
            case_sensitive=case_sensitive,
            ignore_policy="all",
        )
        self._sink = sink
        self._lock = threading.Lock()
        self._ignored: set[Path] = set()
        self._ignored_count = 0

    @property
    def ignored_count(self) -> int:
        """How many distinct paths were ignored for their name."""
        with self._lock:
            return self._ignored_count

    def on_closed(self, event: FileClosedEvent) -> None:
        self.touch(_path(event.src_path), "closed")

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:
            self.touch(_path(event.dest_path), "moved")

    def on_created(self, event: FileSystemEvent) -> None:
        self.touch(_path(event.src_path), "created")

    def on_modified(self, event: FileSystemEvent) -> None:
        self.touch(_path(event.src_path), "modified")

    def touch(self, path: Path, kind: TouchKind = "scan") -> None:
        """Report `path` to the sink if its name is a month file's; used for events and scans."""
        if self.is_ignored(str(path)):
            return
        try:
            parse_trip_file(path)
        except DataValidationError as exc:
            self._log_ignored(path, exc)
            return
        self._sink(FileTouched(path=path, kind=kind))

    def _log_ignored(self, path: Path, exc: DataValidationError) -> None:
        with self._lock:
            if path in self._ignored:
                return
            if len(self._ignored) >= _MAX_REMEMBERED_IGNORED:
                self._ignored.clear()
            self._ignored.add(path)
            self._ignored_count += 1
        logger.info("ignoring %s, left where it is: %s", path, exc)


def _path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))
