"""Download progress on the terminal: rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from taxiops.intake.fetch import FetchResult
from taxiops.lifecycle import Lifecycle

_TOTAL = "total"


class RichFetchProgress(Lifecycle):
    """A bar per file and one for the total: bytes, rate, ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._total_task = self._progress.add_task(_TOTAL, total=None)

    def start(self) -> None:
        """Start drawing the bars."""
        self._progress.start()

    def stop(self) -> None:
        """Stop drawing, leaving the last frame on the terminal."""
        self._progress.stop()

    def started(self, name: str, total: int | None, done: int) -> None:
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(name, total=total)
            self._progress.reset(self._tasks[name], total=total, completed=done)
            if total is not None:
                self._totals[name] = total
            self._done[name] = done
            self._update_total()

    def advanced(self, name: str, received: int) -> None:
        with self._lock:
            self._done[name] = self._done.get(name, 0) + received
            self._progress.advance(self._tasks[name], received)
            self._update_total()

    def retrying(self, name: str, attempt: int, delay: float, reason: str) -> None:
        self._progress.console.print(f"{name}: {reason}; retry {attempt} in {delay:.1f} s")

    def finished(self, result: FetchResult) -> None:
        self._progress.console.print(result.message)

    def _update_total(self) -> None:
        total = sum(self._totals.values()) or None
        self._progress.update(self._total_task, total=total, completed=sum(self._done.values()))


@dataclass
class _FileLine:
    total: int | None
    done: int
    since: float
    done_since: int
    printed: float = field(default=0.0)


class PlainFetchProgress:
    """One line per file at most every `interval` seconds, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 1.0) -> None:
        self._stream = stream or sys.stdout
        self._interval = interval
        self._lock = threading.Lock()
        self._files: dict[str, _FileLine] = {}

    def started(self, name: str, total: int | None, done: int) -> None:
        with self._lock:
            self._files[name] = _FileLine(total, done, time.monotonic(), done)
            resumed = f", resuming at {_mib(done)}" if done else ""
            self._print(f"{name}: downloading {_mib(total)}{resumed}")

    def advanced(self, name: str, received: int) -> None:
        with self._lock:
            line = self._files[name]
            line.done += received
            now = time.monotonic()
            if now - line.printed >= self._interval or line.done == line.total:
                line.printed = now
                self._print(f"{name}: {_describe(line, now)}")

    def retrying(self, name: str, attempt: int, delay: float, reason: str) -> None:
        with self._lock:
            self._print(f"{name}: {reason}; retry {attempt} in {delay:.1f} s")

    def finished(self, result: FetchResult) -> None:
        with self._lock:
            self._print(result.message)

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


def _describe(line: _FileLine, now: float) -> str:
    elapsed = max(now - line.since, 1e-6)
    rate = (line.done - line.done_since) / elapsed
    if line.total is None:
        return f"{_mib(line.done)} at {_mib(rate)}/s"
    share = line.done / line.total if line.total else 1.0
    left = (line.total - line.done) / rate if rate > 0 else float("inf")
    eta = "?" if left == float("inf") else f"{left:.0f} s"
    return f"{_mib(line.done)} of {_mib(line.total)} ({share:.0%}) at {_mib(rate)}/s, ETA {eta}"


def _mib(size: float | None) -> str:
    return "? MiB" if size is None else f"{size / 1024**2:.2f} MiB"


def fetch_progress_for(
    stream: TextIO | None = None,
) -> AbstractContextManager[RichFetchProgress | PlainFetchProgress]:
    """Rich bars when `stream` (stdout) is a terminal, plain lines otherwise; use in `with`."""
    stream = stream or sys.stdout
    if stream.isatty():
        return RichFetchProgress(Console(file=stream))
    return nullcontext(PlainFetchProgress(stream))
