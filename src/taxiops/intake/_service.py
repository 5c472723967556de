"""The watcher service: `FolderIntake` (folder -> ledger) and `HandOff` (ledger -> Prefect)
run by one worker thread, beside watchdog's observer.

Every entry that lands in the incoming folder (except in-flight temp names) ends either
handed off to Prefect or quarantined with a reason file and one rejection alert.

Threads: watchdog's observer and emitter (events only touch the debouncer) and one
worker that checks entries, hands files off, sends rejection alerts and polls flow-run
outcomes. Every one of them is joined by `stop()`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver, PollingObserverVFS

from taxiops.intake._backoff import Backoff
from taxiops.intake._folder import FolderIntake
from taxiops.intake._handoff import HandOff
from taxiops.intake._ledger import Ledger, LedgerEntry
from taxiops.intake._outbox import Rejection
from taxiops.intake._submitter import Submitter
from taxiops.intake._worker import Counters, WatcherStats, WorkerContext
from taxiops.lifecycle import Lifecycle

if TYPE_CHECKING:
    from taxiops.settings import Settings

logger = logging.getLogger("taxiops.intake")

_MAX_IDLE_SECONDS = 1.0  # look at the ledger at least this often (other processes write it too)
_ERROR_PAUSE_SECONDS = 1.0


class WatcherService(Lifecycle):
    """Watches `settings.incoming_dir` and hands each complete month file to Prefect once.

    Anything else that lands there (a bad name, a folder, a link out of the folder, a
    file too large, empty or not parquet) is moved to `settings.quarantine_dir` with a
    reason file, recorded in the ledger and announced once (`taxiops.data.rejected`).

    `start()` reconciles first: entries already in the folder are checked (missed while
    down), pending ledger entries are handed off, pending rejection alerts are sent and
    runs left `submitted` are read back from the API. A context manager;
    `run_forever()` is `taxiops watch`.
    """

    def __init__(
        self,
        settings: Settings,
        submitter: Submitter,
        *,
        backoff: Backoff | None = None,
        poll_runs_every_seconds: float | None = None,
        debounce_seconds: float | None = None,
        polling_interval_seconds: float | None = None,
        claim_lease_seconds: float | None = None,
    ) -> None:
        """Timings come from `settings` (`TAXIOPS_WATCH_*`); keyword arguments override them."""
        self._settings = settings
        self._submitter = submitter
        self._backoff = backoff or Backoff(max_delay_seconds=settings.watch_backoff_max_seconds)
        self._poll_every = _given(poll_runs_every_seconds, settings.watch_poll_runs_seconds)
        self._polling_interval = _given(
            polling_interval_seconds, settings.watch_polling_interval_seconds
        )
        self._lease = _given(claim_lease_seconds, settings.watch_claim_lease_seconds)
        self._debounce = _given(debounce_seconds, settings.watch_debounce_seconds)
        self._folder = settings.incoming_dir.resolve()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._ledger: Ledger | None = None
        self._lifecycle = threading.Lock()
        self._stopping = threading.Event()  # tells the threads to end
        self._asked_to_stop = threading.Event()  # `request_stop()`: ends `run_forever()`
        self._wake = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._counters = Counters()

    # --- public ------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """The watched folder, absolute."""
        return self._folder

    @property
    def ledger(self) -> Ledger:
        """The ledger this service writes (opened on first use)."""
        if self._ledger is None:
            self._ledger = Ledger(self._settings.ledger_path)
        return self._ledger

    @property
    def is_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def failure(self) -> str | None:
        """Why a started service stopped working though no stop was asked (its worker or
        watchdog's observer thread ended, or watchdog stopped watching the folder, as it
        does when the folder is removed); None while it works, or before `start()`."""
        worker, observer = self._worker, self._observer
        if worker is None or self._stopping.is_set():
            return None
        if not worker.is_alive():
            return "its worker thread ended"
        if observer is not None and not observer.is_alive():
            return "watchdog's observer thread ended"
        if observer is not None and not all(e.is_alive() for e in observer.emitters):
            return f"watchdog stopped watching {self._folder} (removed or replaced?)"
        return None

    @property
    def uses_polling(self) -> bool:
        """Whether the running observer polls the folder (settings, or no native events)."""
        return isinstance(self._observer, PollingObserver | PollingObserverVFS)

    def stats(self) -> WatcherStats:
        """A snapshot of this process's counters."""
        return self._counters.snapshot()

    def start(self) -> None:
        """Open the ledger, start watching, then reconcile in the background."""
        with self._lifecycle:
            if self._worker is not None:
                raise RuntimeError("watcher already started")
            self._folder.mkdir(parents=True, exist_ok=True)
            # Open (and create) the ledger before any thread runs.
            intake, hand_off = self._parts(self.ledger)
            self._stopping.clear()
            self._observer = intake.start_observer()
            worker = threading.Thread(
                target=self._run,
                args=(intake, hand_off),
                name=f"taxiops-watcher[{self._folder.name}]",
                daemon=True,
            )
            self._worker = worker
            worker.start()
            logger.info(
                "watching %s (%s observer), ledger %s",
                self._folder,
                type(self._observer).__name__,
                self.ledger.path,
            )

    def request_stop(self) -> None:
        """Ask the service to stop; safe from signal handlers and other threads."""
        self._asked_to_stop.set()
        self._end_threads()

    def _end_threads(self) -> None:
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop watching and join every thread this service started.

        Raises `TimeoutError` if a thread is still alive after `timeout` seconds
        (a hand-off stuck on an unresponsive API).
        """
        with self._lifecycle:
            self._end_threads()
            observer, worker = self._observer, self._worker
            threads: list[threading.Thread] = []
            if observer is not None:
                threads.extend(observer.emitters)
                threads.append(observer)
                if observer.is_alive():
                    observer.stop()  # also stops and joins the emitters
            if worker is not None:
                threads.append(worker)
            deadline = time.monotonic() + timeout
            for thread in threads:
                if thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))
            alive = [thread.name for thread in threads if thread.is_alive()]
            if alive:
                raise TimeoutError(f"watcher threads still running after {timeout:.0f}s: {alive}")
            self._observer = self._worker = None
            if threads:
                logger.info("stopped watching %s", self._folder)

    def run_forever(self) -> None:
        """Start, block until `request_stop()`, Ctrl-C or SIGTERM, then stop. A service that
        stops working meanwhile (`failure()`, e.g. its folder was removed) is stopped and
        started again, which makes the folder anew; a start that fails raises."""
        restore_sigterm = threading.current_thread() is threading.main_thread()
        if restore_sigterm:
            previous = signal.getsignal(signal.SIGTERM)

            def _on_sigterm(signum: int, frame: FrameType | None) -> None:
                self.request_stop()

            signal.signal(signal.SIGTERM, _on_sigterm)
        self._asked_to_stop.clear()
        self.start()
        try:
            while not self._asked_to_stop.wait(1.0):
                failure = self.failure()
                if failure is not None:
                    logger.warning("%s; watching it again", failure)
                    self.stop()
                    self.start()
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            try:
                self.stop()
            finally:
                if restore_sigterm and previous is not None:
                    signal.signal(signal.SIGTERM, previous)

    # --- worker ---------------------------------------------------------------------------
    def _parts(self, ledger: Ledger) -> tuple[FolderIntake, HandOff]:
        context = WorkerContext(
            owner=self._owner,
            backoff=self._backoff,
            counters=self._counters,
            wake=self._wake,
            stopping=self._stopping,
        )
        intake = FolderIntake(
            self._settings,
            ledger,
            context,
            debounce_seconds=self._debounce,
            polling_interval_seconds=self._polling_interval,
        )
        hand_off = HandOff(
            self._settings,
            ledger,
            self._submitter,
            context,
            claim_lease_seconds=self._lease,
            is_ignored=intake.is_ignored,
        )
        return intake, hand_off

    def _run(self, intake: FolderIntake, hand_off: HandOff) -> None:
        hand_off.release_dead_claims()
        intake.scan_folder()
        # The first poll, at once, reconciles runs left `submitted` and unrecorded quarantine.
        next_poll = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                intake.check_due_files()
                hand_off.submit_due()
                hand_off.send_rejection_alerts()
                if time.monotonic() >= next_poll:
                    hand_off.poll_runs()
                    intake.record_unrecorded_quarantine()
                    next_poll = time.monotonic() + self._poll_every
                timeout = _idle_timeout(intake, hand_off, next_poll)
            except Exception:
                # A locked or unreadable ledger must not end the service; try again shortly.
                logger.exception("watcher step failed; retrying in %.0fs", _ERROR_PAUSE_SECONDS)
                timeout = _ERROR_PAUSE_SECONDS
            self._wake.wait(timeout)


def _idle_timeout(intake: FolderIntake, hand_off: HandOff, next_poll: float) -> float:
    """Seconds the worker may sleep before something is due."""
    now = time.monotonic()
    candidates = [_MAX_IDLE_SECONDS, next_poll - now]
    if (next_check := intake.next_check_at()) is not None:
        candidates.append(next_check - now)
    if (next_attempt := hand_off.next_attempt_at()) is not None:
        candidates.append(next_attempt - time.time())
    return max(0.0, min(candidates))


def status_rows(settings: Settings) -> list[LedgerEntry]:
    """Every ledger entry, oldest first, for `taxiops status`; empty before any watch."""
    if not settings.ledger_path.is_file():
        return []
    return Ledger(settings.ledger_path).entries()


def rejection_rows(settings: Settings) -> list[Rejection]:
    """Every entry the watcher refused, oldest first, for `taxiops status`."""
    if not settings.ledger_path.is_file():
        return []
    return Ledger(settings.ledger_path).outbox.rejections()


def _given(value: float | None, default: float) -> float:
    return default if value is None else value
