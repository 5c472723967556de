"""The rejection-alert outbox: every entry the watcher refused, and whether its alert went out.

Entries refused before any run (bad name, folder, outside link, empty or torn file, too
large, a recorded file that vanished before its hand-off) are `Rejection`s. Each keeps
its alert pending until the Prefect API acknowledged the rejection event, whose id is
the rejection's id; a failed send is retried at `alert_next_at`. The outbox lives in the
ledger's SQLite file (`LedgerDatabase`), so a file's row can become a rejection in one
transaction (`Ledger.forget_vanished`).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from taxiops.intake._database import LedgerDatabase, when

_COLUMNS = (
    "id, path, quarantined_path, rule, detail, message, sha256, rejected_at, alert_sent_at, "
    "alert_attempts, alert_error"
)


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


class RejectionOutbox:
    """Rejections with their alert state, in the ledger's database; safe for several
    threads and processes. Times are wall-clock seconds."""

    def __init__(self, database: LedgerDatabase) -> None:
        self._db = database

    def record(
        self,
        *,
        path: Path,
        quarantined_path: Path | None,
        rule: str,
        detail: str,
        message: str,
        sha256: str | None = None,
    ) -> Rejection | None:
        """Record a refused entry; its alert is pending until `mark_sent`.

        None, and nothing recorded, when `quarantined_path` is recorded already.
        """
        with self._db.write() as conn:
            return insert_rejection(
                conn,
                path=path,
                quarantined_path=quarantined_path,
                rule=rule,
                detail=detail,
                message=message,
                sha256=sha256,
            )

    def unsent(self, now: float | None = None) -> list[Rejection]:
        """Rejections whose alert is not acknowledged yet and is due for another try."""
        now = time.time() if now is None else now
        return self._select(
            "WHERE alert_sent_at IS NULL AND (alert_next_at IS NULL OR alert_next_at <= ?)",
            (now,),
        )

    def mark_sent(self, rejection_id: str) -> bool:
        """The Prefect API acknowledged the rejection event. True when this call recorded it."""
        with self._db.write() as conn:
            return bool(
                conn.execute(
                    "UPDATE rejections SET alert_sent_at = ?, alert_error = NULL "
                    "WHERE id = ? AND alert_sent_at IS NULL",
                    (time.time(), rejection_id),
                ).rowcount
            )

    def record_failure(self, rejection_id: str, *, error: str, retry_at: float) -> int:
        """The rejection event was not acknowledged; try again at `retry_at`. Returns attempts."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE rejections SET alert_attempts = alert_attempts + 1, alert_error = ?, "
                "alert_next_at = ? WHERE id = ? AND alert_sent_at IS NULL",
                (error, retry_at, rejection_id),
            )
            row = conn.execute(
                "SELECT alert_attempts FROM rejections WHERE id = ?", (rejection_id,)
            ).fetchone()
        return int(row["alert_attempts"]) if row is not None else 0

    def next_retry_at(self) -> float | None:
        """The earliest wall-clock time a pending alert is due (0: now), if any is pending."""
        [row] = self._db.read(
            "SELECT MIN(COALESCE(alert_next_at, 0)) AS due FROM rejections "
            "WHERE alert_sent_at IS NULL"
        )
        return None if row["due"] is None else float(row["due"])

    def rejections(self) -> list[Rejection]:
        """Every rejection, oldest first."""
        return self._select()

    def _select(self, where: str = "", params: tuple[object, ...] = ()) -> list[Rejection]:
        rows = self._db.read(
            f"SELECT {_COLUMNS} FROM rejections {where} ORDER BY rejected_at, id", params
        )
        return [_rejection(row) for row in rows]


def insert_rejection(
    conn: sqlite3.Connection,
    *,
    path: Path,
    quarantined_path: Path | None,
    rule: str,
    detail: str,
    message: str,
    sha256: str | None,
) -> Rejection | None:
    """Insert a pending rejection inside the caller's write transaction; None when
    `quarantined_path` is recorded already (nothing inserted)."""
    rejection_id = str(uuid.uuid4())
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
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM rejections WHERE id = ?", (rejection_id,)
    ).fetchone()
    return _rejection(row)


def _rejection(row: sqlite3.Row) -> Rejection:
    rejected_at = when(row["rejected_at"])
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
        alert_sent_at=when(row["alert_sent_at"]),
        alert_attempts=row["alert_attempts"],
        alert_error=row["alert_error"],
    )
