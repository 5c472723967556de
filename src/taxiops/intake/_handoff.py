"""Ledger -> Prefect: hand each due file off once, follow its flow run, send rejection alerts.

    Ledger.due ─claim─> Submitter.submit ─> Ledger.mark_submitted
        └─ failed: Ledger.record_failed_attempt, retried with backoff
    Ledger.submitted ─> Submitter.read_outcome ─> Ledger.mark_finished
        missing or interrupted run ─> Ledger.requeue (handed off again)
        crashed run ─> Ledger.finish_and_retry (up to `retry_crashed_runs` times)
    RejectionOutbox.unsent ─> Submitter.announce_rejection ─> RejectionOutbox.mark_sent

Runs on the watcher's worker thread only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.intake._incoming import IncomingFile
from taxiops.intake._ledger import FileState, Ledger, LedgerEntry
from taxiops.intake._rejections import record_vanished, send_rejection_alerts
from taxiops.intake._submitter import RunOutcome, RunStatus, Submitter
from taxiops.intake._worker import WorkerContext
from taxiops.tripfile import parse_trip_file, sha256_of

if TYPE_CHECKING:
    from taxiops.settings import Settings

logger = logging.getLogger("taxiops.intake")


class HandOff:
    """Hands the ledger's due files to Prefect through a `Submitter` and records what
    became of their flow runs. Looks at the folder only to find a file renamed while it
    waited."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        submitter: Submitter,
        context: WorkerContext,
        *,
        claim_lease_seconds: float,
        is_ignored: Callable[[Path], bool],
    ) -> None:
        """`is_ignored` tells in-flight names apart (those of `FolderIntake`)."""
        self._settings = settings
        self._ledger = ledger
        self._submitter = submitter
        self._ctx = context
        self._lease = claim_lease_seconds
        self._is_ignored = is_ignored
        self._folder = settings.incoming_dir.resolve()
        self._poll_failing = False

    def next_attempt_at(self) -> float | None:
        """The earliest wall-clock time a pending file or rejection alert is due, if any."""
        due = [
            at
            for at in (self._ledger.next_attempt_at(), self._ledger.outbox.next_retry_at())
            if at is not None
        ]
        return min(due, default=None)

    def release_dead_claims(self) -> None:
        """Claims held by crashed watchers on this host need not wait out their lease."""
        try:
            claims = self._ledger.claims()
        except Exception:
            logger.exception("cannot read claims from the ledger")
            return
        for sha256, owner in claims.items():
            if _owner_is_dead(owner):
                self._ledger.release(sha256, owner)
                logger.info("released the claim of %s on %s (process gone)", owner, sha256[:12])

    # --- hand-off -------------------------------------------------------------------------
    def submit_due(self) -> None:
        """Claim and hand off every due file."""
        for entry in self._ledger.due():
            if self._ctx.stopping.is_set():
                return
            claimed = self._ledger.claim(entry.sha256, self._ctx.owner, lease_seconds=self._lease)
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
                self._ledger.record_seen(incoming)  # follow the rename
                logger.info(
                    "%s: renamed to %s while waiting; handing it off under its new name",
                    entry.path.name,
                    path.name,
                )
            try:
                submission = self._submitter.submit(incoming, runs=entry.runs)
            except Exception as exc:
                attempts = entry.attempts + 1
                delay = self._ctx.backoff.delay(attempts)
                self._ledger.record_failed_attempt(
                    entry.sha256, self._ctx.owner, error=str(exc), retry_at=time.time() + delay
                )
                self._ctx.counters.count("failed_attempts")
                logger.warning(
                    "%s: hand-off attempt %d failed, next try in %.1fs: %s",
                    incoming.path.name,
                    attempts,
                    delay,
                    exc,
                )
                return
        except BaseException:
            self._ledger.release(entry.sha256, self._ctx.owner)
            raise
        if self._ledger.mark_submitted(entry.sha256, submission.flow_run_id):
            self._ctx.counters.count("submitted")
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
            if self._is_ignored(candidate):
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
        if record_vanished(error, self._ledger, sha256=entry.sha256) is not None:
            self._ctx.counters.count("rejected")
            self._ctx.wake.set()

    # --- rejection alerts -----------------------------------------------------------------
    def send_rejection_alerts(self) -> None:
        """Announce every due pending rejection (retried with backoff)."""
        done = send_rejection_alerts(
            self._ledger.outbox, self._submitter, self._ctx.backoff, stopping=self._ctx.stopping
        )
        self._ctx.counters.count("alerts_sent", done.sent)
        self._ctx.counters.count("alert_failures", done.failed)

    # --- outcomes -------------------------------------------------------------------------
    def poll_runs(self) -> None:
        """Read back the state of every run left `submitted` and record the finished ones."""
        for entry in self._ledger.submitted():
            if self._ctx.stopping.is_set():
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
                self._requeue(entry, outcome)
            else:
                self._record_end(entry, outcome)

    def _requeue(self, entry: LedgerEntry, outcome: RunOutcome) -> None:
        if self._ledger.requeue(entry.sha256, outcome.detail or "flow run missing"):
            self._ctx.counters.count("requeued")
            logger.warning(
                "%s: flow run %s is missing on the server; handing the file off again",
                entry.path.name,
                entry.flow_run_id,
            )
            self._ctx.wake.set()

    def _record_end(self, entry: LedgerEntry, outcome: RunOutcome) -> None:
        """Record a finished run; a crashed one is handed off again, up to the limit."""
        state = FileState(outcome.status.value)
        retries = self._settings.retry_crashed_runs
        if state is FileState.CRASHED and entry.runs <= retries:
            if self._ledger.finish_and_retry(entry.sha256, state, outcome.detail):
                self._ctx.counters.count("retried")
                logger.warning(
                    "%s: training run %s crashed (%s); handing the file off again "
                    "(automatic retry %d of %d)",
                    entry.path.name,
                    entry.flow_run_id,
                    outcome.detail,
                    entry.runs,
                    retries,
                )
                self._ctx.wake.set()
            return
        if self._ledger.mark_finished(entry.sha256, state, outcome.detail):
            self._ctx.counters.count("finished")
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
