"""The watcher service: observer -> debounced admission check -> ledger -> hand-off -> outcome.

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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver, PollingObserverVFS

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.intake._admission import (
    Admitted,
    Gone,
    Refused,
    StillArriving,
    entry_signature,
    inspect_entry,
)
from taxiops.intake._backoff import Backoff
from taxiops.intake._debounce import Debouncer, DueCheck
from taxiops.intake._handler import WATCHED_EVENT_TYPES, IncomingFileHandler
from taxiops.intake._incoming import (
    FileSignature,
    FileTouched,
    IncomingFile,
    describe_incoming,
)
from taxiops.intake._ledger import FileState, Ledger, LedgerEntry, Rejection
from taxiops.intake._rejections import (
    quarantine_and_record,
    record_unrecorded_quarantine,
    record_vanished,
    send_rejection_alerts,
)
from taxiops.intake._submitter import RunOutcome, RunStatus, Submitter
from taxiops.tripfile import parse_trip_file, sha256_of

if TYPE_CHECKING:
    from taxiops.settings import Settings

logger = logging.getLogger("taxiops.intake")

_MAX_IDLE_SECONDS = 1.0  # look at the ledger at least this often (other processes write it too)
_ERROR_PAUSE_SECONDS = 1.0
_RECENT_REJECTION_SECONDS = 60.0  # an entry gone this soon after a rejection was quarantined


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


class WatcherService:
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
        self._settle = settings.watch_settle_seconds
        self._incomplete = settings.watch_incomplete_seconds
        self._polling_interval = _given(
            polling_interval_seconds, settings.watch_polling_interval_seconds
        )
        self._lease = _given(claim_lease_seconds, settings.watch_claim_lease_seconds)
        debounce_seconds = _given(debounce_seconds, settings.watch_debounce_seconds)
        self._folder = settings.incoming_dir.resolve()
        self._quarantine_dir = settings.quarantine_dir.resolve()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._debouncer = Debouncer(debounce_seconds)
        self._handler = IncomingFileHandler(self._on_touched)
        self._ledger: Ledger | None = None
        self._lifecycle = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._poll_failing = False
        self._quarantine_failures: dict[Path, int] = {}  # worker thread only

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

    @property
    def uses_polling(self) -> bool:
        """Whether the running observer polls the folder (settings, or no native events)."""
        return isinstance(self._observer, PollingObserver | PollingObserverVFS)

    def stats(self) -> WatcherStats:
        """A snapshot of this process's counters."""
        with self._counts_lock:
            counts = dict(self._counts)
        return WatcherStats(**counts)

    def start(self) -> None:
        """Open the ledger, start watching, then reconcile in the background."""
        with self._lifecycle:
            if self._worker is not None:
                raise RuntimeError("watcher already started")
            self._folder.mkdir(parents=True, exist_ok=True)
            self.ledger  # noqa: B018 - open (and create) the ledger before any thread runs
            self._stopping.clear()
            self._observer = self._start_observer()
            worker = threading.Thread(
                target=self._run, name=f"taxiops-watcher[{self._folder.name}]", daemon=True
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
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop watching and join every thread this service started.

        Raises `TimeoutError` if a thread is still alive after `timeout` seconds
        (a hand-off stuck on an unresponsive API).
        """
        with self._lifecycle:
            self.request_stop()
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
        """Start, block until `request_stop()`, Ctrl-C or SIGTERM, then stop."""
        restore_sigterm = threading.current_thread() is threading.main_thread()
        if restore_sigterm:
            previous = signal.getsignal(signal.SIGTERM)

            def _on_sigterm(signum: int, frame: FrameType | None) -> None:
                self.request_stop()

            signal.signal(signal.SIGTERM, _on_sigterm)
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            try:
                self.stop()
            finally:
                if restore_sigterm and previous is not None:
                    signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> WatcherService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- threads ---------------------------------------------------------------------------
    def _start_observer(self) -> BaseObserver:
        if not self._settings.watch_polling:
            observer = Observer()
            self._schedule(observer)
            try:
                observer.start()
                return observer
            except OSError as exc:  # e.g. the inotify watch limit is reached
                logger.warning("native file events unavailable (%s); polling instead", exc)
        # lstat: with the default os.stat the snapshot skips dangling links, which must be
        # quarantined too.
        observer = PollingObserverVFS(
            stat=os.lstat, listdir=os.scandir, polling_interval=self._polling_interval
        )
        self._schedule(observer)
        observer.start()
        return observer

    def _schedule(self, observer: BaseObserver) -> None:
        observer.schedule(
            self._handler,
            self._folder,
            recursive=False,
            event_filter=list(WATCHED_EVENT_TYPES),
        )

    def _on_touched(self, touched: FileTouched) -> None:
        # Observer thread: just schedule; the worker does the slow parts.
        if touched.path.parent == self._folder:
            logger.debug("%s: %s", touched.path.name, touched.kind)
            # A close after writing or a move into the folder means the writer is done, so
            # its check need not wait for the size to settle (the footer is still checked).
            self._debouncer.touch(touched.path, finished=touched.kind in ("closed", "moved"))
            self._wake.set()

    def _run(self) -> None:
        self._release_dead_claims()
        self._scan_folder()
        # The first poll, at once, reconciles runs left `submitted` and unrecorded quarantine.
        next_poll = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._check_due_files()
                self._submit_due()
                self._send_rejection_alerts()
                if time.monotonic() >= next_poll:
                    self._poll_runs()
                    self._record_unrecorded_quarantine()
                    next_poll = time.monotonic() + self._poll_every
                timeout = self._idle_timeout(next_poll)
            except Exception:
                # A locked or unreadable ledger must not end the service; try again shortly.
                logger.exception("watcher step failed; retrying in %.0fs", _ERROR_PAUSE_SECONDS)
                timeout = _ERROR_PAUSE_SECONDS
            self._wake.wait(timeout)

    def _idle_timeout(self, next_poll: float) -> float:
        now = time.monotonic()
        candidates = [_MAX_IDLE_SECONDS, next_poll - now]
        if (next_check := self._debouncer.next_due()) is not None:
            candidates.append(next_check - now)
        if (next_attempt := self.ledger.next_attempt_at()) is not None:
            candidates.append(next_attempt - time.time())
        return max(0.0, min(candidates))

    def _count(self, name: str, by: int = 1) -> None:
        if by:
            with self._counts_lock:
                self._counts[name] = self._counts.get(name, 0) + by

    def _release_dead_claims(self) -> None:
        """Claims held by crashed watchers on this host need not wait out their lease."""
        try:
            claims = self.ledger.claims()
        except Exception:
            logger.exception("cannot read claims from the ledger")
            return
        for sha256, owner in claims.items():
            if _owner_is_dead(owner):
                self.ledger.release(sha256, owner)
                logger.info("released the claim of %s on %s (process gone)", owner, sha256[:12])

    # --- folder -> ledger or quarantine ----------------------------------------------------
    def _scan_folder(self) -> None:
        """Check every entry already in the folder: the ones that arrived while we were down."""
        try:
            paths = sorted(self._folder.iterdir())
        except OSError as exc:
            logger.error("cannot list %s: %s", self._folder, exc)
            return
        for path in paths:
            self._handler.touch(path, "scan")

    def _check_due_files(self) -> None:
        for due in self._debouncer.pop_due():
            if self._stopping.is_set():
                return
            self._check(due)

    def _settled(self, due: DueCheck, signature: FileSignature, now: float) -> bool:
        """Whether the size and mtime held for the settle time; if not, schedule a recheck."""
        if signature != due.signature:
            self._debouncer.recheck(
                due.path, at=now + self._settle, signature=signature, signature_at=now
            )
            return False
        if now - due.signature_at < self._settle:
            self._debouncer.recheck(
                due.path,
                at=due.signature_at + self._settle,
                signature=signature,
                signature_at=due.signature_at,
            )
            return False
        return True

    def _check(self, due: DueCheck) -> None:
        """Decide an entry once its writer is done (closed, moved in, or steady for the settle
        time): record a complete month file, quarantine a bad entry, or wait for the writer."""
        path, now = due.path, time.monotonic()
        signature = entry_signature(path, self._folder)
        if signature is None:
            self._vanished(path)
            return
        if not due.finished and not self._settled(due, signature, now):
            return
        steady_since = due.signature_at if signature == due.signature else now
        try:
            verdict = inspect_entry(
                path,
                self._folder,
                max_file_bytes=self._settings.max_file_bytes,
                max_file_rows=self._settings.max_file_rows,
            )
        except OSError as exc:
            logger.warning(
                "%s: cannot look at it (%s); will look again on its next change", path, exc
            )
            return
        match verdict:
            case Admitted():
                self._admit(path, signature, now)
            case Refused(error):
                self._refuse(error, signature, steady_since)
            case StillArriving(error):
                self._wait_for_writer(error, signature, steady_since, now)
            case Gone():
                self._vanished(path)

    def _wait_for_writer(
        self, error: DataValidationError, signature: FileSignature, steady_since: float, now: float
    ) -> None:
        """An empty or footer-less month file is refused only once it stayed unchanged for
        `watch_incomplete_seconds`; a writer that is still writing resets that clock."""
        self._count("incomplete")
        if now - steady_since >= self._incomplete:
            detail = f"{error.detail}; unchanged for {self._incomplete:g}s"
            self._refuse(
                DataValidationError(error.path, error.rule, detail), signature, steady_since
            )
            return
        logger.info(
            "%s: %s; waiting up to %gs for the writer to finish",
            error.path.name,
            error.detail,
            self._incomplete,
        )
        self._debouncer.recheck(
            error.path,
            at=steady_since + self._incomplete,
            signature=signature,
            signature_at=steady_since,
        )

    def _refuse(
        self, error: DataValidationError, signature: FileSignature, steady_since: float
    ) -> None:
        """Quarantine and record a refused entry; if the quarantine folder cannot be written,
        leave the entry where it is and try again later."""
        path, folder = error.path, self._quarantine_dir
        try:
            rejection = quarantine_and_record(
                error, self.ledger, quarantine_dir=folder, by=f"watcher {self._owner}"
            )
        except OSError as exc:
            failures = self._quarantine_failures.get(path, 0) + 1
            self._quarantine_failures[path] = failures
            delay = self._backoff.delay(failures)
            logger.error(
                "%s breaks rule %s but cannot be moved to %s (%s); left where it is, "
                "trying again in %.1fs",
                path,
                error.rule,
                folder,
                exc,
                delay,
            )
            self._debouncer.recheck(
                path, at=time.monotonic() + delay, signature=signature, signature_at=steady_since
            )
            return
        self._quarantine_failures.pop(path, None)
        if rejection is not None:
            self._count("rejected")
            self._wake.set()  # send its alert now

    def _vanished(self, path: Path) -> None:
        """An entry gone before it was decided. One the ledger knows is the hand-off's
        business; one just quarantined was moved by another watcher on this folder."""
        self._quarantine_failures.pop(path, None)
        recently = time.time() - _RECENT_REJECTION_SECONDS
        if any(entry.path == path for entry in self.ledger.entries()) or any(
            rejection.path == path and rejection.rejected_at.timestamp() > recently
            for rejection in self.ledger.rejections()
        ):
            logger.debug("%s is gone", path)
            return
        self._count("vanished")
        logger.info("%s vanished before it was complete; nothing to train", path)

    def _admit(self, path: Path, signature: FileSignature, now: float) -> None:
        try:
            incoming = describe_incoming(path)
        except FileNotFoundError:
            self._vanished(path)
            return
        except (OSError, DataValidationError) as exc:
            logger.warning("%s: cannot read it (%s); will look again on its next change", path, exc)
            return
        after = entry_signature(path, self._folder)
        if after != signature:  # written to while we hashed it
            if after is not None:
                self._debouncer.recheck(
                    path, at=now + self._settle, signature=after, signature_at=now
                )
            return
        self._accept(incoming)

    def _accept(self, incoming: IncomingFile) -> None:
        if self.ledger.record_seen(incoming):
            self._count("accepted")
            logger.info(
                "%s: new %s month %s (sha256 %s, %d bytes)",
                incoming.path.name,
                incoming.taxi_type,
                incoming.month,
                incoming.sha256[:12],
                incoming.size,
            )
            return
        known = self.ledger.get(incoming.sha256)
        if known is not None and known.path != incoming.path:
            self._count("duplicates")
            logger.info(
                "%s: same bytes as %s (%s); not trained again",
                incoming.path.name,
                known.path.name,
                known.state,
            )

    # --- ledger -> Prefect ----------------------------------------------------------------
    def _submit_due(self) -> None:
        for entry in self.ledger.due():
            if self._stopping.is_set():
                return
            claimed = self.ledger.claim(entry.sha256, self._owner, lease_seconds=self._lease)
            if claimed is not None:
                self._hand_off(claimed)

    def _hand_off(self, entry: LedgerEntry) -> None:
        try:
            path = entry.path if entry.path.is_file() else self._find_renamed(entry)
            if path is None:
                self._vanished_before_hand_off(entry)
                return
            trip = parse_trip_file(path)
            incoming = IncomingFile(
                path=path,
                taxi_type=trip.taxi_type,
                month=trip.month,
                sha256=entry.sha256,
                size=entry.size,
            )
            if path != entry.path:
                self.ledger.record_seen(incoming)  # follow the rename
                logger.info(
                    "%s: renamed to %s while waiting; handing it off under its new name",
                    entry.path.name,
                    path.name,
                )
            try:
                submission = self._submitter.submit(incoming, runs=entry.runs)
            except Exception as exc:
                attempts = entry.attempts + 1
                delay = self._backoff.delay(attempts)
                self.ledger.record_failed_attempt(
                    entry.sha256, self._owner, error=str(exc), retry_at=time.time() + delay
                )
                self._count("failed_attempts")
                logger.warning(
                    "%s: hand-off attempt %d failed, next try in %.1fs: %s",
                    incoming.path.name,
                    attempts,
                    delay,
                    exc,
                )
                return
        except BaseException:
            self.ledger.release(entry.sha256, self._owner)
            raise
        if self.ledger.mark_submitted(entry.sha256, submission.flow_run_id):
            self._count("submitted")
            logger.info(
                "%s: handed to Prefect as flow run %s (%s)",
                incoming.path.name,
                submission.flow_run_name,
                submission.flow_run_id,
            )

    def _find_renamed(self, entry: LedgerEntry) -> Path | None:
        """The month file in the folder holding `entry`'s bytes under another name (renamed
        while it waited, perhaps while no watcher ran), if any."""
        try:
            candidates = sorted(self._folder.iterdir())
        except OSError:
            return None
        for candidate in candidates:
            if self._handler.is_ignored(str(candidate)):
                continue
            try:
                if candidate.is_symlink() or candidate.lstat().st_size != entry.size:
                    continue
                parse_trip_file(candidate)
                if candidate.is_file() and sha256_of(candidate) == entry.sha256:
                    return candidate
            except (OSError, DataValidationError):
                continue
        return None

    def _vanished_before_hand_off(self, entry: LedgerEntry) -> None:
        """A recorded month file removed before its hand-off was never trained: a rejection,
        alerted once, rather than a silent loss. Its bytes count as new if dropped again."""
        error = DataValidationError(
            entry.path,
            ValidationRule.FILE_VANISHED,
            f"{entry.taxi_type} {entry.month} (sha256 {entry.sha256[:12]}) was removed from "
            "the incoming folder before it was handed to training",
        )
        if record_vanished(error, self.ledger, sha256=entry.sha256) is not None:
            self._count("rejected")
            self._wake.set()

    def _record_unrecorded_quarantine(self) -> None:
        try:
            self._count(
                "rejected", len(record_unrecorded_quarantine(self.ledger, self._quarantine_dir))
            )
        except Exception:
            logger.exception("cannot reconcile %s with the ledger", self._quarantine_dir)

    def _send_rejection_alerts(self) -> None:
        done = send_rejection_alerts(
            self.ledger, self._submitter, self._backoff, stopping=self._stopping
        )
        self._count("alerts_sent", done.sent)
        self._count("alert_failures", done.failed)

    def _poll_runs(self) -> None:
        """Read back the state of every run left `submitted` and record the finished ones."""
        for entry in self.ledger.submitted():
            if self._stopping.is_set():
                return
            if entry.flow_run_id is None:
                continue
            try:
                outcome = self._submitter.read_outcome(entry.flow_run_id)
            except Exception as exc:
                if not self._poll_failing:
                    logger.warning("cannot read flow-run states yet: %s", exc)
                self._poll_failing = True
                return
            self._poll_failing = False
            if outcome.status is RunStatus.ACTIVE:
                continue
            if outcome.status is RunStatus.INTERRUPTED:
                # Cancelled by our own shutdown: the month was never trained, so free the
                # idempotency key and hand the file off again rather than drop it.
                try:
                    self._submitter.discard(entry.flow_run_id)
                except Exception as exc:
                    logger.warning(
                        "cannot discard interrupted run %s yet: %s", entry.flow_run_id, exc
                    )
                    return
                outcome = RunOutcome(RunStatus.MISSING, "interrupted by shutdown; handed off again")
            if outcome.status is RunStatus.MISSING:
                if self.ledger.requeue(entry.sha256, outcome.detail or "flow run missing"):
                    self._count("requeued")
                    logger.warning(
                        "%s: flow run %s is missing on the server; handing the file off again",
                        entry.path.name,
                        entry.flow_run_id,
                    )
                    self._wake.set()
                continue
            state = FileState(outcome.status.value)
            if state is FileState.CRASHED and entry.runs <= self._settings.retry_crashed_runs:
                if self.ledger.finish_and_retry(entry.sha256, state, outcome.detail):
                    self._count("retried")
                    logger.warning(
                        "%s: training run %s crashed (%s); handing the file off again "
                        "(automatic retry %d of %d)",
                        entry.path.name,
                        entry.flow_run_id,
                        outcome.detail,
                        entry.runs,
                        self._settings.retry_crashed_runs,
                    )
                    self._wake.set()
                continue
            if self.ledger.mark_finished(entry.sha256, state, outcome.detail):
                self._count("finished")
                logger.info("%s: training run %s %s", entry.path.name, entry.flow_run_id, state)


def _owner_is_dead(owner: str) -> bool:
    """Whether a claim owner (`host:pid:token`) is a process on this host that no longer runs."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    except OSError:  # exists but is not ours (EPERM)
        return False
    return False


def status_rows(settings: Settings) -> list[LedgerEntry]:
    """Every ledger entry, oldest first, for `taxiops status`; empty before any watch."""
    if not settings.ledger_path.is_file():
        return []
    return Ledger(settings.ledger_path).entries()


def rejection_rows(settings: Settings) -> list[Rejection]:
    """Every entry the watcher refused, oldest first, for `taxiops status`."""
    if not settings.ledger_path.is_file():
        return []
    return Ledger(settings.ledger_path).rejections()


def _given(value: float | None, default: float) -> float:
    return default if value is None else value
