"""Folder -> ledger: every entry that lands in the incoming folder is recorded or quarantined.

    watchdog event ─> IncomingFileHandler ─> Debouncer ─> inspect_entry (admission)
        admitted ─> Ledger.record_seen (new bytes) or a duplicate (known bytes)
        refused  ─> quarantine/ + reason file ─> RejectionOutbox (alert pending)
        still being written ─> checked again until `watch_incomplete_seconds`

The observer thread only schedules checks (`on_touched`); the watcher's worker thread
calls `check_due_files`, `scan_folder` and `record_unrecorded_quarantine`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from taxiops.errors import DataValidationError
from taxiops.intake._admission import (
    Admitted,
    Gone,
    Refused,
    StillArriving,
    entry_signature,
    inspect_entry,
)
from taxiops.intake._debounce import Debouncer, DueCheck
from taxiops.intake._handler import WATCHED_EVENT_TYPES, IncomingFileHandler
from taxiops.intake._incoming import FileSignature, FileTouched, IncomingFile, describe_incoming
from taxiops.intake._ledger import Ledger
from taxiops.intake._rejections import quarantine_and_record, record_unrecorded_quarantine
from taxiops.intake._worker import WorkerContext

if TYPE_CHECKING:
    from taxiops.settings import Settings

logger = logging.getLogger("taxiops.intake")

_RECENT_REJECTION_SECONDS = 60.0  # an entry gone this soon after a rejection was quarantined


class FolderIntake:
    """Decides every entry of the incoming folder: a month file for the ledger, or one for
    quarantine. Hands nothing to Prefect (that is `HandOff`)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        context: WorkerContext,
        *,
        debounce_seconds: float,
        polling_interval_seconds: float,
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._ctx = context
        self._settle = settings.watch_settle_seconds
        self._incomplete = settings.watch_incomplete_seconds
        self._polling_interval = polling_interval_seconds
        self._folder = settings.incoming_dir.resolve()
        self._quarantine_dir = settings.quarantine_dir.resolve()
        self._debouncer = Debouncer(debounce_seconds)
        self._handler = IncomingFileHandler(self.on_touched)
        self._quarantine_failures: dict[Path, int] = {}  # worker thread only

    @property
    def folder(self) -> Path:
        return self._folder

    def is_ignored(self, path: Path) -> bool:
        """Whether `path`'s name marks a file in flight (a temp or partial name)."""
        return self._handler.is_ignored(str(path))

    def next_check_at(self) -> float | None:
        """The `time.monotonic()` time of the next scheduled check, if any."""
        return self._debouncer.next_due()

    # --- observer thread ------------------------------------------------------------------
    def start_observer(self) -> BaseObserver:
        """Start a native observer, or a polling one (settings, or no native events)."""
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

    def on_touched(self, touched: FileTouched) -> None:
        """Schedule a check of a touched entry (observer thread: no slow work here)."""
        if touched.path.parent == self._folder:
            logger.debug("%s: %s", touched.path.name, touched.kind)
            # A close after writing or a move into the folder means the writer is done, so
            # its check need not wait for the size to settle (the footer is still checked).
            self._debouncer.touch(touched.path, finished=touched.kind in ("closed", "moved"))
            self._ctx.wake.set()

    # --- worker thread --------------------------------------------------------------------
    def scan_folder(self) -> None:
        """Check every entry already in the folder: the ones that arrived while we were down."""
        try:
            paths = sorted(self._folder.iterdir())
        except OSError as exc:
            logger.error("cannot list %s: %s", self._folder, exc)
            return
        for path in paths:
            self._handler.touch(path, "scan")

    def check_due_files(self) -> None:
        """Check every entry whose quiet spell is over."""
        for due in self._debouncer.pop_due():
            if self._ctx.stopping.is_set():
                return
            self._check(due)

    def record_unrecorded_quarantine(self) -> None:
        """Record entries in quarantine that a stopped watcher moved but never recorded."""
        try:
            recorded = record_unrecorded_quarantine(self._ledger.outbox, self._quarantine_dir)
        except Exception:
            logger.exception("cannot reconcile %s with the ledger", self._quarantine_dir)
            return
        self._ctx.counters.count("rejected", len(recorded))

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
        self._ctx.counters.count("incomplete")
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
                error, self._ledger.outbox, quarantine_dir=folder, by=f"watcher {self._ctx.owner}"
            )
        except OSError as exc:
            failures = self._quarantine_failures.get(path, 0) + 1
            self._quarantine_failures[path] = failures
            delay = self._ctx.backoff.delay(failures)
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
            self._ctx.counters.count("rejected")
            self._ctx.wake.set()  # send its alert now

    def _vanished(self, path: Path) -> None:
        """An entry gone before it was decided. One the ledger knows is the hand-off's
        business; one just quarantined was moved by another watcher on this folder."""
        self._quarantine_failures.pop(path, None)
        recently = time.time() - _RECENT_REJECTION_SECONDS
        if any(entry.path == path for entry in self._ledger.entries()) or any(
            rejection.path == path and rejection.rejected_at.timestamp() > recently
            for rejection in self._ledger.outbox.rejections()
        ):
            logger.debug("%s is gone", path)
            return
        logger.info("%s vanished before it was complete; nothing to train", path)
        self._ctx.counters.count("vanished")  # after the log line: tests wait on the count

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
        if self._ledger.record_seen(incoming):
            self._ctx.counters.count("accepted")
            logger.info(
                "%s: new %s month %s (sha256 %s, %d bytes)",
                incoming.path.name,
                incoming.taxi_type,
                incoming.month,
                incoming.sha256[:12],
                incoming.size,
            )
            return
        known = self._ledger.get(incoming.sha256)
        if known is not None and known.path != incoming.path:
            self._ctx.counters.count("duplicates")
            logger.info(
                "%s: same bytes as %s (%s); not trained again",
                incoming.path.name,
                known.path.name,
                known.state,
            )
