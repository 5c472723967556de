"""Entries the watcher refuses: kept in quarantine, recorded in the ledger, alerted on once.

    refused entry ─> quarantine/ (+ reason file) ─> RejectionOutbox.record (alert pending)
        ─> Submitter.announce_rejection ─> RejectionOutbox.mark_sent
                        └─ failed: RejectionOutbox.record_failure, retried with backoff

Only the process whose move into quarantine succeeded records the rejection, so two
watchers on one folder alert once. The event id is the rejection id, so a re-sent
alert is stored (and alerted on) once by the server.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from taxiops.errors import DataValidationError
from taxiops.intake._backoff import Backoff
from taxiops.intake._ledger import Ledger
from taxiops.intake._outbox import Rejection, RejectionOutbox
from taxiops.intake._submitter import Submitter
from taxiops.intake.quarantine import REASON_SUFFIX, quarantine, quarantined_entries, read_reason

logger = logging.getLogger("taxiops.intake")


def quarantine_and_record(
    error: DataValidationError, outbox: RejectionOutbox, *, quarantine_dir: Path, by: str
) -> Rejection | None:
    """Move the refused entry into `quarantine_dir` and record its rejection (alert pending).

    None when the entry was already gone (moved by another watcher, renamed, deleted):
    nothing is recorded then. Raises `OSError` when the quarantine folder cannot be
    written; the entry is left where it is.
    """
    moved = quarantine(error, quarantine_dir, by=by)
    if moved is None:
        logger.debug("%s was gone before it could be quarantined", error.path)
        return None
    rejection = outbox.record(
        path=error.path,
        quarantined_path=moved.path,
        rule=error.rule.value,
        detail=error.detail,
        message=str(error),
    )
    logger.warning("rejected %s; moved to %s", error, moved.path)
    return rejection


def record_vanished(error: DataValidationError, ledger: Ledger, *, sha256: str) -> Rejection | None:
    """Record that a `seen` month file vanished before its hand-off (nothing kept): its
    ledger row becomes a rejection in one transaction. None when it was no longer `seen`."""
    rejection = ledger.forget_vanished(
        sha256, path=error.path, rule=error.rule.value, detail=error.detail, message=str(error)
    )
    if rejection is not None:
        logger.warning("rejected %s; nothing left to quarantine", error)
    return rejection


def record_unrecorded_quarantine(
    outbox: RejectionOutbox, quarantine_dir: Path, *, older_than_seconds: float = 10.0
) -> list[Rejection]:
    """Record entries a watcher moved into quarantine but did not record (it died between
    the two steps, or the ledger write failed), so their alert still goes out. Entries
    younger than `older_than_seconds` may be a live watcher's, about to be recorded; one
    recorded twice is ignored by the outbox."""
    known = {rejection.quarantined_path for rejection in outbox.rejections()}
    cutoff = time.time() - older_than_seconds
    recorded = []
    for entry in quarantined_entries(quarantine_dir):
        if entry in known:
            continue
        try:
            reason = read_reason(entry)
            written = entry.with_name(entry.name + REASON_SUFFIX).stat().st_mtime
            if not str(reason.get("by", "")).startswith("watcher ") or written > cutoff:
                continue  # a flow run's rejection alerts by its own event
            rejection = outbox.record(
                path=Path(str(reason["original_path"])),
                quarantined_path=entry,
                rule=str(reason["rule"]),
                detail=str(reason["detail"]),
                message=str(reason["message"]),
            )
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("cannot read the reason file of %s: %s", entry, exc)
            continue
        if rejection is not None:
            logger.warning("recorded %s, quarantined by a watcher that stopped", entry.name)
            recorded.append(rejection)
    return recorded


@dataclass(frozen=True)
class AlertRound:
    """What one pass over the pending rejection alerts did."""

    sent: int = 0
    failed: int = 0


def send_rejection_alerts(
    outbox: RejectionOutbox, submitter: Submitter, backoff: Backoff, *, stopping: threading.Event
) -> AlertRound:
    """Announce every due pending rejection; a failed one is retried after a backoff delay."""
    sent = failed = 0
    for rejection in outbox.unsent():
        if stopping.is_set():
            break
        try:
            submitter.announce_rejection(rejection)
        except Exception as exc:
            attempts = rejection.alert_attempts + 1
            delay = backoff.delay(attempts)
            outbox.record_failure(rejection.id, error=str(exc), retry_at=time.time() + delay)
            failed += 1
            logger.warning(
                "%s: rejection alert attempt %d failed, next try in %.1fs: %s",
                rejection.path.name,
                attempts,
                delay,
                exc,
            )
            continue
        if outbox.mark_sent(rejection.id):
            sent += 1
            logger.info(
                "%s: rejection announced to Prefect (%s)", rejection.path.name, rejection.rule
            )
    return AlertRound(sent=sent, failed=failed)
