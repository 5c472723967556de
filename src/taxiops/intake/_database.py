"""The SQLite file the ledger and the rejection outbox share: connections and the schema.

One file in WAL mode, so readers (`taxiops status`) run while a watcher writes and
several watcher processes on one folder share it safely. Every call opens its own
short-lived connection, so one `LedgerDatabase` may be shared by threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

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


class LedgerDatabase:
    """The ledger's SQLite file, created or brought up to date when opened."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout_seconds
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self.connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            _create_or_migrate(conn)

    @property
    def path(self) -> Path:
        return self._path

    def connect(self) -> sqlite3.Connection:
        """A new connection with `sqlite3.Row` rows; the caller closes it."""
        # isolation_level=None: we issue BEGIN ourselves, so a transaction means what it says.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock up front; committed when
        the block ends, rolled back when it raises."""
        with closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            if conn.in_transaction:
                conn.commit()

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """The rows of one query, on a connection of its own."""
        with closing(self.connect()) as conn:
            return conn.execute(sql, params).fetchall()


def when(value: float | None) -> datetime | None:
    """A stored wall-clock time as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


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
