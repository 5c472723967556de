"""The watchdog handler: every entry that appears in the incoming folder becomes a `FileTouched`.

Files, folders and links alike are reported, whatever their name: the worker decides
whether an entry is a month file to hand off or something to quarantine. Only names
that downloaders and editors use while a file is in flight are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    PatternMatchingEventHandler,
)

from taxiops.intake._incoming import FileTouched, TouchKind

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
# of a file would otherwise wake us up again. Folder modifications are left out too:
# every change to a file in the watched folder also modifies the folder.
WATCHED_EVENT_TYPES: tuple[type[FileSystemEvent], ...] = (
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    DirCreatedEvent,
    DirMovedEvent,
)


class IncomingFileHandler(PatternMatchingEventHandler):
    """Hands a `FileTouched` to `sink` for every path an event names, except in-flight names.

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
            ignore_directories=False,  # a folder named like a month file is quarantined
            case_sensitive=case_sensitive,
            ignore_policy="all",
        )
        self._sink = sink

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
        """Report `path` to the sink unless its name marks a file in flight; for events and
        scans."""
        if not self.is_ignored(str(path)):
            self._sink(FileTouched(path=path, kind=kind))


def _path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))
