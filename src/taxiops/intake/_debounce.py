"""Debounce bursts of events: one completeness check per path after a quiet spell."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taxiops.intake._incoming import FileSignature


@dataclass(frozen=True)
class DueCheck:
    """A path whose quiet spell is over, with the signature taken at its previous check."""

    path: Path
    signature: FileSignature | None
    signature_at: float
    finished: bool = False  # the latest event said the writer is done (closed, moved in)


@dataclass
class _Waiting:
    due: float
    signature: FileSignature | None
    signature_at: float
    finished: bool = False


class Debouncer:
    """Thread-safe schedule of completeness checks, keyed by path.

    Every touch pushes the path's check to `quiet_seconds` from now, so a burst of
    events (created, modified x N, closed) yields one check.
    """

    def __init__(
        self, quiet_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet = quiet_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[Path, _Waiting] = {}

    def touch(self, path: Path, *, finished: bool = False) -> None:
        """Something happened to `path`: check it after the quiet spell. `finished` says the
        event itself means the writer is done (closed after writing, moved in)."""
        due = self._clock() + self._quiet
        with self._lock:
            waiting = self._waiting.get(path)
            if waiting is None:
                self._waiting[path] = _Waiting(
                    due=due, signature=None, signature_at=0.0, finished=finished
                )
            else:
                waiting.due = due
                waiting.finished = finished

    def recheck(
        self, path: Path, *, at: float, signature: FileSignature, signature_at: float
    ) -> None:
        """Check `path` again at `at` against `signature`, unless a touch came meanwhile."""
        with self._lock:
            waiting = self._waiting.get(path)
            if waiting is None:
                self._waiting[path] = _Waiting(
                    due=at, signature=signature, signature_at=signature_at
                )
            else:
                # Touched while being checked: keep the touch's due time, reuse the signature.
                waiting.signature, waiting.signature_at = signature, signature_at

    def pop_due(self, now: float | None = None) -> list[DueCheck]:
        """Remove and return every check whose time has come, earliest first."""
        now = self._clock() if now is None else now
        with self._lock:
            due = sorted((w.due, path) for path, w in self._waiting.items() if w.due <= now)
            checks = []
            for _, path in due:
                waiting = self._waiting.pop(path)
                checks.append(
                    DueCheck(path, waiting.signature, waiting.signature_at, waiting.finished)
                )
        return checks

    def next_due(self) -> float | None:
        """Clock time of the earliest scheduled check, if any."""
        with self._lock:
            return min((w.due for w in self._waiting.values()), default=None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)
