"""Watcher test helpers: parquet bytes, a recording submitter, condition waits."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from taxiops.intake import (
    Backoff,
    IncomingFile,
    Rejection,
    RunOutcome,
    RunStatus,
    Submission,
    Submitter,
    WatcherService,
)
from taxiops.settings import Settings


class ServiceFactory(Protocol):
    """`make_service`: a `WatcherService` with fast test timings, stopped at teardown."""

    def __call__(
        self,
        submitter: Submitter,
        settings: Settings | None = None,
        *,
        backoff: Backoff | None = None,
        poll_runs_every_seconds: float | None = None,
        debounce_seconds: float | None = None,
        polling_interval_seconds: float | None = None,
        claim_lease_seconds: float | None = None,
    ) -> WatcherService: ...


T = TypeVar("T")

FAST_BACKOFF = Backoff(first_delay_seconds=0.05, factor=2.0, max_delay_seconds=0.2)


def parquet_bytes(seed: int, rows: int = 200) -> bytes:
    """A small, valid parquet file whose bytes differ for every seed."""
    table = pa.table({"seed": [seed] * rows, "value": [float(i * seed) for i in range(rows)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(condition: Callable[[], T | None], *, timeout: float = 10.0, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


@dataclass(frozen=True)
class Call:
    incoming: IncomingFile
    at: float  # time.monotonic() of the acknowledged submission


@dataclass
class RecordingSubmitter(Submitter):
    """A `Submitter` that records acknowledged hand-offs and rejection alerts; can fail
    first, like a down API (`fail_first` hand-offs, `fail_announcements` alerts, or every
    hand-off while `refusing`)."""

    fail_first: int = 0
    fail_announcements: int = 0
    refusing: bool = False
    calls: list[Call] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    discarded: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    announce_attempts: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, incoming: IncomingFile, *, runs: int = 1) -> Submission:
        with self._lock:
            self.attempts.append(time.monotonic())
            if self.refusing or len(self.attempts) <= self.fail_first:
                raise ConnectionError("connection refused (recording submitter)")
            self.calls.append(Call(incoming, time.monotonic()))
            run_id = f"run-{len(self.calls)}"
        return Submission(flow_run_id=run_id, flow_run_name=f"{incoming.path.stem}-{run_id}")

    def read_outcome(self, flow_run_id: str) -> RunOutcome:
        with self._lock:
            return self.outcomes.get(flow_run_id, RunOutcome(RunStatus.ACTIVE))

    def announce_rejection(self, rejection: Rejection) -> None:
        with self._lock:
            self.announce_attempts.append(time.monotonic())
            if len(self.announce_attempts) <= self.fail_announcements:
                raise ConnectionError("connection refused (recording submitter)")
            self.rejections.append(rejection)

    def rejected(self) -> list[Rejection]:
        """The acknowledged rejection alerts so far."""
        with self._lock:
            return list(self.rejections)

    def discard(self, flow_run_id: str) -> None:
        with self._lock:
            self.discarded.append(flow_run_id)
            self.outcomes.pop(flow_run_id, None)

    def shas(self) -> list[str]:
        with self._lock:
            return [call.incoming.sha256 for call in self.calls]


def write_file(path: Path, data: bytes) -> Path:
    """Write a file in one go (open, write, close)."""
    path.write_bytes(data)
    return path
