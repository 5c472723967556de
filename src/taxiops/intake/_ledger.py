"""The durable ledger: every month file the watcher accepted, by content SHA-256.

One SQLite file (`LedgerDatabase`), shared safely by several watcher processes on the
same folder. A file moves through

    seen ──claim──> (claimed) ──> submitted ──> succeeded | failed | crashed | rejected
      ^                 │             │                       │         │
      └── hand-off failed (retry_at)  └── run missing (requeue)  └─────────┴── retry (run n+1)

The same bytes under any name are one row, so they train once; new bytes under an
old name are a new row, so they train again. A claim is an atomic conditional
UPDATE in a `BEGIN IMMEDIATE` transaction: of several processes racing for a row,
exactly one wins. A claim expires after a lease so a crashed process cannot hold a
file forever; Prefect's idempotency key (`run_key`: the SHA-256 and the run number)
makes the rare takeover safe. A retry raises the run number, so it gets a new key.

Entries the watcher refused before any run live beside the files, in the same SQLite
file, as the rejection-alert outbox (`Ledger.outbox`, see `_outbox`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from taxiops.intake._database import LedgerDatabase, when
from taxiops.intake._incoming import IncomingFile
from taxiops.intake._outbox import Rejection, RejectionOutbox, insert_rejection

_COLUMNS = (
    "sha256, path, taxi_type, month, size, state, flow_run_id, detail, attempts, "
    "next_attempt_at, claimed_by, seen_at, submitted_at, finished_at, updated_at, runs"
)


class FileState(StrEnum):
    """Where a file is on its way from the folder to a model."""

    SEEN = "seen"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CRASHED = "crashed"
    REJECTED = "rejected"

    @property
    def is_finished(self) -> bool:
        """Whether the training flow run reached an end."""
        return self in (
            FileState.SUCCEEDED,
            FileState.FAILED,
            FileState.CRASHED,
            FileState.REJECTED,
        )

    @property
    def can_retry(self) -> bool:
        """Whether `taxiops retry` may hand the same bytes off again (bad data cannot pass)."""
        return self in (FileState.FAILED, FileState.CRASHED)


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger, as `taxiops status` shows it."""

    sha256: str
    path: Path
    taxi_type: str
    month: str
    size: int
    state: FileState
    flow_run_id: str | None
    detail: str | None
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    seen_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    runs: int = 1  # the number of the current (or last) flow run of these bytes

    @property
    def run_key(self) -> str:
        """The idempotency key of this entry's current flow run."""
        return run_key(self.sha256, self.runs)


def run_key(sha256: str, runs: int) -> str:
    """Prefect idempotency key of run number `runs` of these bytes: the SHA-256 for the first
    run (so a re-sent hand-off finds it), with `:run<n>` for retries."""
    return sha256 if runs <= 1 else f"{sha256}:run{runs}"


def _entry(row: sqlite3.Row) -> LedgerEntry:
    seen_at = when(row["seen_at"])
    updated_at = when(row["updated_at"])
    assert seen_at is not None and updated_at is not None
    return LedgerEntry(
        sha256=row["sha256"],
        path=Path(row["path"]),
        taxi_type=row["taxi_type"],
        month=row["month"],
        size=row["size"],
        state=FileState(row["state"]),
        flow_run_id=row["flow_run_id"],
        detail=row["detail"],
        attempts=row["attempts"],
        next_attempt_at=when(row["next_attempt_at"]),
        claimed_by=row["claimed_by"],
        seen_at=seen_at,
        submitted_at=when(row["submitted_at"]),
        finished_at=when(row["finished_at"]),
        updated_at=updated_at,
        runs=row["runs"],
    )


class Ledger:
    """The watcher's durable record of files, safe for several threads and processes.

    Every call opens its own short-lived connection, so one `Ledger` may be shared by
    threads; several processes may open the same file. Times are wall-clock seconds.
    """

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self._db = LedgerDatabase(path, busy_timeout_seconds=busy_timeout_seconds)
        self._outbox = RejectionOutbox(self._db)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def outbox(self) -> RejectionOutbox:
        """The rejection alerts, in this ledger's database."""
        return self._outbox

    def _select(self, where: str = "", params: tuple[object, ...] = ()) -> list[LedgerEntry]:
        rows = self._db.read(
            f"SELECT {_COLUMNS} FROM files {where} ORDER BY seen_at, sha256", params
        )
        return [_entry(row) for row in rows]

    # --- recording -------------------------------------------------------------------
    def record_seen(self, incoming: IncomingFile) -> bool:
        """Record a complete file. True when these bytes are new; False when already known.

        A known file not yet handed off takes the new path if its old path is gone
        (the file was renamed while waiting).
        """
        now = time.time()
        with self._db.write() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO files (sha256, path, taxi_type, month, size, state, "
                "seen_at, updated_at) VALUES (?, ?, ?, ?, ?, 'seen', ?, ?)",
                (
                    incoming.sha256,
                    str(incoming.path),
                    incoming.taxi_type,
                    str(incoming.month),
                    incoming.size,
                    now,
                    now,
                ),
            ).rowcount
            if inserted:
                return True
            row = conn.execute(
                "SELECT path, state FROM files WHERE sha256 = ?", (incoming.sha256,)
            ).fetchone()
            old_path = Path(row["path"])
            if (
                row["state"] == FileState.SEEN
                and old_path != incoming.path
                and not old_path.exists()
            ):
                conn.execute(
                    "UPDATE files SET path = ?, taxi_type = ?, month = ?, updated_at = ? "
                    "WHERE sha256 = ?",
                    (
                        str(incoming.path),
                        incoming.taxi_type,
                        str(incoming.month),
                        now,
                        incoming.sha256,
                    ),
                )
            return False

    def claim(self, sha256: str, owner: str, *, lease_seconds: float) -> LedgerEntry | None:
        """Atomically take a due `seen` file for hand-off; None when another owner has it,
        it is not due yet, or it is no longer `seen`."""
        now = time.time()
        with self._db.write() as conn:
            claimed = conn.execute(
                "UPDATE files SET claimed_by = ?, claim_expires_at = ?, updated_at = ? "
                "WHERE sha256 = ? AND state = 'seen' "
                "AND (claimed_by IS NULL OR claimed_by = ? OR claim_expires_at < ?) "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
                (owner, now + lease_seconds, now, sha256, owner, now, now),
            ).rowcount
            if not claimed:
                return None
            return _entry_of(conn, sha256)

    def record_failed_attempt(self, sha256: str, owner: str, *, error: str, retry_at: float) -> int:
        """Give back a claim after a failed hand-off; the file stays `seen` until `retry_at`.

        Returns the number of failed attempts so far.
        """
        with self._db.write() as conn:
            conn.execute(
                "UPDATE files SET attempts = attempts + 1, detail = ?, next_attempt_at = ?, "
                "claimed_by = NULL, claim_expires_at = NULL, updated_at = ? "
                "WHERE sha256 = ? AND state = 'seen' AND claimed_by = ?",
                (error, retry_at, time.time(), sha256, owner),
            )
            row = conn.execute("SELECT attempts FROM files WHERE sha256 = ?", (sha256,)).fetchone()
        return int(row["attempts"]) if row is not None else 0

    def release(self, sha256: str, owner: str) -> None:
        """Give back a claim without counting an attempt (the service is stopping)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE files SET claimed_by = NULL, claim_expires_at = NULL "
                "WHERE sha256 = ? AND claimed_by = ?",
                (sha256, owner),
            )

    def mark_submitted(self, sha256: str, flow_run_id: str) -> bool:
        """Record the acknowledged hand-off. True when this call moved the file to `submitted`."""
        now = time.time()
        with self._db.write() as conn:
            return bool(
                conn.execute(
                    "UPDATE files SET state = 'submitted', flow_run_id = ?, detail = NULL, "
                    "claimed_by = NULL, claim_expires_at = NULL, next_attempt_at = NULL, "
                    "submitted_at = ?, updated_at = ? WHERE sha256 = ? AND state = 'seen'",
                    (flow_run_id, now, now, sha256),
                ).rowcount
            )

    def mark_finished(self, sha256: str, state: FileState, detail: str | None = None) -> bool:
        """Record how the training flow run ended. True when this call moved the file."""
        if not state.is_finished:
            raise ValueError(f"{state} is not a finished state")
        now = time.time()
        with self._db.write() as conn:
            return bool(
                conn.execute(
                    "UPDATE files SET state = ?, detail = ?, finished_at = ?, updated_at = ? "
                    "WHERE sha256 = ? AND state = 'submitted'",
                    (state.value, detail, now, now, sha256),
                ).rowcount
            )

    def requeue(self, sha256: str, reason: str) -> bool:
        """Send a `submitted` file back to `seen` (its flow run vanished from the server)."""
        with self._db.write() as conn:
            return bool(
                conn.execute(
                    "UPDATE files SET state = 'seen', flow_run_id = NULL, detail = ?, "
                    "next_attempt_at = NULL, submitted_at = NULL, updated_at = ? "
                    "WHERE sha256 = ? AND state = 'submitted'",
                    (reason, time.time(), sha256),
                ).rowcount
            )

    def finish_and_retry(self, sha256: str, state: FileState, detail: str | None = None) -> bool:
        """Record a run's end and, in the same transaction, hand the bytes off again as run
        n+1 (an automatic retry of a crashed run). True when this call did it."""
        reason = f"{state.value}, retrying: {detail or ''}".rstrip(": ")
        return self._start_next_run(sha256, ("submitted",), reason, finished=True) is not None

    def retry(self, sha256: str, reason: str = "retry requested") -> LedgerEntry | None:
        """Hand a failed or crashed file off again as a new flow run (`taxiops retry`).

        Returns the updated entry, or None when the file is not in a retryable state.
        """
        return self._start_next_run(sha256, ("failed", "crashed"), reason, finished=False)

    def _start_next_run(
        self, sha256: str, from_states: tuple[str, ...], reason: str, *, finished: bool
    ) -> LedgerEntry | None:
        """Send a file in one of `from_states` back to `seen` as run n+1 (a new idempotency
        key); `finished` records the end of the run it leaves. None when not in those states."""
        now = time.time()
        marks = ", ".join("?" for _ in from_states)
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE files SET state = 'seen', runs = runs + 1, flow_run_id = NULL, "
                "detail = ?, attempts = 0, next_attempt_at = NULL, claimed_by = NULL, "
                "claim_expires_at = NULL, submitted_at = NULL, finished_at = ?, "
                f"updated_at = ? WHERE sha256 = ? AND state IN ({marks})",
                (reason, now if finished else None, now, sha256, *from_states),
            ).rowcount
            if not changed:
                return None
            return _entry_of(conn, sha256)

    def forget_vanished(
        self, sha256: str, *, path: Path, rule: str, detail: str, message: str
    ) -> Rejection | None:
        """A `seen` file vanished before its hand-off: drop its row and record its rejection
        (alert pending) in one transaction. None, and nothing changed, when it is not `seen`."""
        with self._db.write() as conn:
            if not conn.execute(
                "DELETE FROM files WHERE sha256 = ? AND state = 'seen'", (sha256,)
            ).rowcount:
                return None
            rejection = insert_rejection(
                conn,
                path=path,
                quarantined_path=None,
                rule=rule,
                detail=detail,
                message=message,
                sha256=sha256,
            )
            if rejection is None:
                conn.rollback()
            return rejection

    # --- reading -----------------------------------------------------------------------
    def get(self, sha256: str) -> LedgerEntry | None:
        """The entry of these bytes, if any."""
        found = self._select("WHERE sha256 = ?", (sha256,))
        return found[0] if found else None

    def entries(self) -> list[LedgerEntry]:
        """Every entry, oldest first."""
        return self._select()

    def pending(self) -> list[LedgerEntry]:
        """Files seen but not yet handed off (including ones waiting for a retry)."""
        return self._select("WHERE state = 'seen'")

    def submitted(self) -> list[LedgerEntry]:
        """Files handed off whose flow run has not finished yet."""
        return self._select("WHERE state = 'submitted'")

    def due(self, now: float | None = None) -> list[LedgerEntry]:
        """Pending files whose retry time has come and that nobody holds a live claim on."""
        now = time.time() if now is None else now
        return self._select(
            "WHERE state = 'seen' AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "AND (claimed_by IS NULL OR claim_expires_at < ?)",
            (now, now),
        )

    def next_attempt_at(self) -> float | None:
        """The earliest wall-clock time a pending file becomes due (its retry time, or the
        end of another owner's claim; 0: now), if any file is pending."""
        [row] = self._db.read(
            "SELECT MIN(MAX(COALESCE(next_attempt_at, 0), "
            "CASE WHEN claimed_by IS NULL THEN 0 ELSE claim_expires_at END)) AS due "
            "FROM files WHERE state = 'seen'"
        )
        return None if row["due"] is None else float(row["due"])

    def claims(self) -> dict[str, str]:
        """Owner of every claimed pending file, by SHA-256."""
        rows = self._db.read(
            "SELECT sha256, claimed_by FROM files WHERE state = 'seen' AND claimed_by IS NOT NULL"
        )
        return {row["sha256"]: row["claimed_by"] for row in rows}


def _entry_of(conn: sqlite3.Connection, sha256: str) -> LedgerEntry:
    row = conn.execute(f"SELECT {_COLUMNS} FROM files WHERE sha256 = ?", (sha256,)).fetchone()
    return _entry(row)
