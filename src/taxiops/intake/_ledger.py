"""The durable ledger: every month file the watcher accepted, by content SHA-256, and every
entry it refused.

One SQLite file in WAL mode, shared safely by several watcher processes on the
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

Entries the watcher refused before any run (bad name, folder, outside link, empty or
torn file, too large) are `rejections`; each keeps its alert pending until the Prefect
API acknowledged the rejection event, whose id is the rejection's id.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from taxiops.intake._incoming import IncomingFile

_SCHEMA_VERSION = 2
_FILES_TABLE = """
CREATE TABLE files (
    sha256           TEXT PRIMARY KEY,
    path             TEXT NOT NULL,
    taxi_type        TEXT NOT NULL,
    month            TEXT NOT NULL,
    size             INTEGER NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('seen', 'submitted', 'succeeded', 'failed', 'crashed',
                                      'rejected')),
    flow_run_id      TEXT,
    detail           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL,
    claimed_by       TEXT,
    claim_expires_at REAL,
    seen_at          REAL NOT NULL,
    submitted_at     REAL,
    finished_at      REAL,
    updated_at       REAL NOT NULL,
    runs             INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX files_by_state ON files (state);
"""
_REJECTIONS_TABLE = """
CREATE TABLE rejections (
    id               TEXT PRIMARY KEY,
    path             TEXT NOT NULL,
    quarantined_path TEXT UNIQUE,
    rule             TEXT NOT NULL,
    detail           TEXT NOT NULL,
    message          TEXT NOT NULL,
    sha256           TEXT,
    rejected_at      REAL NOT NULL,
    alert_sent_at    REAL,
    alert_attempts   INTEGER NOT NULL DEFAULT 0,
    alert_next_at    REAL,
    alert_error      TEXT
);
CREATE INDEX rejections_unsent ON rejections (alert_sent_at);
"""
_V1_COLUMNS = (
    "sha256, path, taxi_type, month, size, state, flow_run_id, detail, attempts, "
    "next_attempt_at, claimed_by, claim_expires_at, seen_at, submitted_at, finished_at, "
    "updated_at"
)
_COLUMNS = (
    "sha256, path, taxi_type, month, size, state, flow_run_id, detail, attempts, "
    "next_attempt_at, claimed_by, seen_at, submitted_at, finished_at, updated_at, runs"
)
_REJECTION_COLUMNS = (
    "id, path, quarantined_path, rule, detail, message, sha256, rejected_at, alert_sent_at, "
    "alert_attempts, alert_error"
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


@dataclass(frozen=True)
class Rejection:
    """An entry the watcher refused before any flow run, and whether its alert went out."""

    id: str  # also the id of its `taxiops.data.rejected` event
    path: Path
    quarantined_path: Path | None
    rule: str
    detail: str
    message: str
    sha256: str | None
    rejected_at: datetime
    alert_sent_at: datetime | None
    alert_attempts: int
    alert_error: str | None


def _rejection(row: sqlite3.Row) -> Rejection:
    rejected_at = _when(row["rejected_at"])
    assert rejected_at is not None
    return Rejection(
        id=row["id"],
        path=Path(row["path"]),
        quarantined_path=None if row["quarantined_path"] is None else Path(row["quarantined_path"]),
        rule=row["rule"],
        detail=row["detail"],
        message=row["message"],
        sha256=row["sha256"],
        rejected_at=rejected_at,
        alert_sent_at=_when(row["alert_sent_at"]),
        alert_attempts=row["alert_attempts"],
        alert_error=row["alert_error"],
    )


def _when(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _entry(row: sqlite3.Row) -> LedgerEntry:
    seen_at = _when(row["seen_at"])
    updated_at = _when(row["updated_at"])
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
        next_attempt_at=_when(row["next_attempt_at"]),
        claimed_by=row["claimed_by"],
        seen_at=seen_at,
        submitted_at=_when(row["submitted_at"]),
        finished_at=_when(row["finished_at"]),
        updated_at=updated_at,
        runs=row["runs"],
    )


class Ledger:
    """The watcher's durable record of files, safe for several threads and processes.

    Every call opens its own short-lived connection, so one `Ledger` may be shared by
    threads; several processes may open the same file. Times are wall-clock seconds.
    """

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout_seconds
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            # WAL lets readers (`taxiops status`) run while a watcher writes.
            conn.execute("PRAGMA journal_mode=WAL")
            _create_or_migrate(conn)

    @property
    def path(self) -> Path:
        return self._path

    # --- connections -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so a transaction means what it says.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock up front."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _select(self, where: str = "", params: tuple[object, ...] = ()) -> list[LedgerEntry]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files {where} ORDER BY seen_at, sha256", params
            ).fetchall()
        return [_entry(row) for row in rows]

    # --- recording -------------------------------------------------------------------
    def record_seen(self, incoming: IncomingFile) -> bool:
        """Record a complete file. True when these bytes are new; False when already known.

        A known file not yet handed off takes the new path if its old path is gone
        (the file was renamed while waiting).
        """
        now = time.time()
        with self._write() as conn:
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
        with self._write() as conn:
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
        with self._write() as conn:
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
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET claimed_by = NULL, claim_expires_at = NULL "
                "WHERE sha256 = ? AND claimed_by = ?",
                (sha256, owner),
            )

    def mark_submitted(self, sha256: str, flow_run_id: str) -> bool:
        """Record the acknowledged hand-off. True when this call moved the file to `submitted`."""
        now = time.time()
        with self._write() as conn:
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
        with self._write() as conn:
            return bool(
                conn.execute(
                    "UPDATE files SET state = ?, detail = ?, finished_at = ?, updated_at = ? "
                    "WHERE sha256 = ? AND state = 'submitted'",
                    (state.value, detail, now, now, sha256),
                ).rowcount
            )

    def requeue(self, sha256: str, reason: str) -> bool:
        """Send a `submitted` file back to `seen` (its flow run vanished from the server)."""
        with self._write() as conn:
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
        with self._write() as conn:
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

    # --- rejections ----------------------------------------------------------------------
    def record_rejection(
        self,
        *,
        path: Path,
        quarantined_path: Path | None,
        rule: str,
        detail: str,
        message: str,
        sha256: str | None = None,
        forget_seen: bool = False,
    ) -> Rejection | None:
        """Record an entry refused before any run; its alert is pending until marked sent.

        None, and nothing recorded, when `quarantined_path` is recorded already, or, with
        `forget_seen`, when the file of `sha256` is not `seen` (with it, that file is
        dropped in the same transaction: it vanished before its hand-off).
        """
        rejection_id = str(uuid.uuid4())
        with self._write() as conn:
            if (
                forget_seen
                and not conn.execute(
                    "DELETE FROM files WHERE sha256 = ? AND state = 'seen'", (sha256,)
                ).rowcount
            ):
                return None
            inserted = conn.execute(
                # OR IGNORE: one quarantined entry is one rejection, however often recorded.
                "INSERT OR IGNORE INTO rejections (id, path, quarantined_path, rule, detail, "
                "message, sha256, rejected_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rejection_id,
                    str(path),
                    None if quarantined_path is None else str(quarantined_path),
                    rule,
                    detail,
                    message,
                    sha256,
                    time.time(),
                ),
            ).rowcount
            if not inserted:
                conn.rollback()
                return None
            row = conn.execute(
                f"SELECT {_REJECTION_COLUMNS} FROM rejections WHERE id = ?", (rejection_id,)
            ).fetchone()
        return _rejection(row)

    def unsent_rejections(self, now: float | None = None) -> list[Rejection]:
        """Rejections whose alert is not acknowledged yet and is due for another try."""
        now = time.time() if now is None else now
        return self._select_rejections(
            "WHERE alert_sent_at IS NULL AND (alert_next_at IS NULL OR alert_next_at <= ?)",
            (now,),
        )

    def mark_alert_sent(self, rejection_id: str) -> bool:
        """The Prefect API acknowledged the rejection event. True when this call recorded it."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    "UPDATE rejections SET alert_sent_at = ?, alert_error = NULL "
                    "WHERE id = ? AND alert_sent_at IS NULL",
                    (time.time(), rejection_id),
                ).rowcount
            )

    def record_alert_failure(self, rejection_id: str, *, error: str, retry_at: float) -> int:
        """The rejection event was not acknowledged; try again at `retry_at`. Returns attempts."""
        with self._write() as conn:
            conn.execute(
                "UPDATE rejections SET alert_attempts = alert_attempts + 1, alert_error = ?, "
                "alert_next_at = ? WHERE id = ? AND alert_sent_at IS NULL",
                (error, retry_at, rejection_id),
            )
            row = conn.execute(
                "SELECT alert_attempts FROM rejections WHERE id = ?", (rejection_id,)
            ).fetchone()
        return int(row["alert_attempts"]) if row is not None else 0

    def rejections(self) -> list[Rejection]:
        """Every rejection, oldest first."""
        return self._select_rejections()

    def _select_rejections(
        self, where: str = "", params: tuple[object, ...] = ()
    ) -> list[Rejection]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                f"SELECT {_REJECTION_COLUMNS} FROM rejections {where} ORDER BY rejected_at, id",
                params,
            ).fetchall()
        return [_rejection(row) for row in rows]

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
        end of another owner's claim) or a pending rejection alert is retried, if any."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT MIN(due) AS due FROM ("
                "SELECT MAX(COALESCE(next_attempt_at, 0), "
                "CASE WHEN claimed_by IS NULL THEN 0 ELSE claim_expires_at END) AS due "
                "FROM files WHERE state = 'seen' "
                "UNION ALL SELECT COALESCE(alert_next_at, 0) AS due "
                "FROM rejections WHERE alert_sent_at IS NULL)"
            ).fetchone()
        return None if row["due"] is None else float(row["due"])

    def claims(self) -> dict[str, str]:
        """Owner of every claimed pending file, by SHA-256."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT sha256, claimed_by FROM files "
                "WHERE state = 'seen' AND claimed_by IS NOT NULL"
            ).fetchall()
        return {row["sha256"]: row["claimed_by"] for row in rows}


def _entry_of(conn: sqlite3.Connection, sha256: str) -> LedgerEntry:
    row = conn.execute(f"SELECT {_COLUMNS} FROM files WHERE sha256 = ?", (sha256,)).fetchone()
    return _entry(row)


def _create_or_migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring a ledger written by an older taxiops up to date.

    Under the write lock, so several processes opening one ledger at once do it once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _statements(_FILES_TABLE + _REJECTIONS_TABLE):
                conn.execute(statement)
        elif version == 1:
            # v2: a `crashed` state (the CHECK constraint: the table is rebuilt), a run
            # number per file, and the rejections table.
            conn.execute("ALTER TABLE files RENAME TO files_v1")
            conn.execute("DROP INDEX IF EXISTS files_by_state")
            for statement in _statements(_FILES_TABLE + _REJECTIONS_TABLE):
                conn.execute(statement)
            conn.execute(f"INSERT INTO files ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM files_v1")
            conn.execute("DROP TABLE files_v1")
        elif version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"ledger schema v{version} is newer than this taxiops (v{_SCHEMA_VERSION})"
            )
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
