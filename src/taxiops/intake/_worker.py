"""What the parts of one watcher's worker share: who it is, its signals and its counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

from taxiops.intake._backoff import Backoff


@dataclass(frozen=True)
class WatcherStats:
    """Counters since `start()`; what this process did, not what the ledger holds."""

    accepted: int = 0  # new bytes recorded in the ledger
    duplicates: int = 0  # bytes already in the ledger under another name
    incomplete: int = 0  # checks that found a steady month file empty or without a footer
    rejected: int = 0  # entries quarantined, or recorded files that vanished before hand-off
    vanished: int = 0  # entries gone before they were complete: nothing to train
    submitted: int = 0  # hand-offs Prefect acknowledged
    failed_attempts: int = 0  # hand-offs that raised and were scheduled for a retry
    finished: int = 0  # flow runs found succeeded / failed / crashed / rejected
    requeued: int = 0  # flow runs missing on the server, handed off again
    retried: int = 0  # crashed flow runs handed off again on their own
    alerts_sent: int = 0  # rejection alerts the Prefect API acknowledged
    alert_failures: int = 0  # rejection alerts that raised and were scheduled for a retry


_NAMES = frozenset(field.name for field in fields(WatcherStats))


class Counters:
    """Thread-safe counters named like the fields of `WatcherStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, name: str, by: int = 1) -> None:
        """Add `by` to counter `name` (a `WatcherStats` field)."""
        if name not in _NAMES:
            raise ValueError(f"no watcher counter named {name!r}")
        if by:
            with self._lock:
                self._counts[name] = self._counts.get(name, 0) + by

    def snapshot(self) -> WatcherStats:
        with self._lock:
            return WatcherStats(**self._counts)


@dataclass(frozen=True)
class WorkerContext:
    """Shared by `FolderIntake` and `HandOff`, which run on one worker thread."""

    owner: str  # `host:pid:token`: names this process in claims and reason files
    backoff: Backoff  # delays of retried hand-offs, alerts and quarantine moves
    counters: Counters
    wake: threading.Event  # set when the worker has work now
    stopping: threading.Event  # set when the service stops: end a pass early
