"""Entries the watcher refuses: kept in quarantine, recorded in the ledger, alerted on once.

    refused entry ─> quarantine/ (+ reason file) ─> Ledger.record_rejection (alert pending)
        ─> Submitter.announce_rejection ─> Ledger.mark_alert_sent
                        └─ failed: Ledger.record_alert_failure, retried with backoff

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
from taxiops.intake._ledger import Ledger, Rejection
from taxiops.intake._submitter import Submitter
from taxiops.intake.quarantine import REASON_SUFFIX, quarantine, quarantined_entries, read_reason

logger = logging.getLogger("taxiops.intake")


def quarantine_and_record(
    error: DataValidationError, ledger: Ledger, *, quarantine_dir: Path, by: str
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
    rejection = ledger.record_rejection(
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
    rejection = ledger.record_rejection(
        path=error.path,
        quarantined_path=None,
        rule=error.rule.value,
        detail=error.detail,
        message=str(error),
        sha256=sha256,
        forget_seen=True,
    )
    if rejection is not None:
        logger.warning("rejected %s; nothing left to quarantine", error)
    return rejection


def record_unrecorded_quarantine(
    ledger: Ledger, quarantine_dir: Path, *, older_than_seconds: float = 10.0
) -> list[Rejection]:
    """Record entries a watcher moved into quarantine but did not record (it died between
    the two steps, or the ledger write failed), so their alert still goes out. Entries
    younger than `older_than_seconds` may be a live watcher's, about to be recorded; one
    recorded twice is ignored by the ledger."""
    known = {rejection.quarantined_path for rejection in ledger.rejections()}
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
            rejection = ledger.record_rejection(
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
    ledger: Ledger, submitter: Submitter, backoff: Backoff, *, stopping: threading.Event
) -> AlertRound:
    """Announce every due pending rejection; a failed one is retried after a backoff delay."""
    sent = failed = 0
    for rejection in ledger.unsent_rejections():
        if stopping.is_set():
            break
        try:
            submitter.announce_rejection(rejection)
        except Exception as exc:
            attempts = rejection.alert_attempts + 1
            delay = backoff.delay(attempts)
            ledger.record_alert_failure(rejection.id, error=str(exc), retry_at=time.time() + delay)
            failed += 1
            logger.warning(
                "%s: rejection alert attempt %d failed, next try in %.1fs: %s",
                rejection.path.name,
                attempts,
                delay,
                exc,
            )
            continue
        if ledger.mark_alert_sent(rejection.id):
            sent += 1
            logger.info("%s: rejection alert sent (%s)", rejection.path.name, rejection.rule)
    return AlertRound(sent=sent, failed=failed)
