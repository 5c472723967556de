"""The alert outbox: every rendered alert is kept in SQLite until a channel answered 2xx.

Why an outbox: Prefect's `send-notification` action runs the notifier block once, inside
the server, and forgets the alert when the block raises. Slack down for a minute lost
every alert, and a storm of alerts posted as fast as the server could render them. So
the block only renders and *enqueues* (`Outbox.enqueue`: one small transaction, no
network), and a dispatcher (`taxiops.notify.dispatch`) drains the outbox at the pace each
channel allows, retrying with backoff. One SQLite file in WAL mode under TAXIOPS_HOME
(`alerts.db`): the server process writes, the dispatcher (in `taxiops up`, or `taxiops
dispatch`) reads and updates; both survive each other's death and restart, because every
step is a committed row.

    enqueue ─> alert (route "new") ─ route_new ─┬─> "single": one delivery per channel
                                                 └─> "held" in a "group" alert (a storm)
    close_due_groups: a group whose window ended gets its grouped message and deliveries
    next_delivery / mark_sent / mark_failed: per channel; "sent" only after a 2xx
    expire: an alert older than the max age is "undeliverable" (reported once)

Idempotency: an alert's `key` is unique (the triggering event's id and the notice kind),
so a re-fired action enqueues nothing new. Delivery is at least once: a message is sent
again only if the dispatcher dies between the receiver's 2xx and the commit of
`mark_sent` (milliseconds), or if a receiver took the message but its answer was lost
(a timeout); Slack webhooks have no idempotency key to close that gap.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

AlertState = Literal["pending", "sent", "undeliverable"]
Route = Literal["new", "single", "held", "group"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    event_id TEXT,
    created_at REAL NOT NULL,
    notice TEXT,
    slack TEXT,
    plain TEXT,
    route TEXT NOT NULL DEFAULT 'new',
    group_id TEXT,
    due_at REAL,
    state TEXT NOT NULL DEFAULT 'pending',
    done_at REAL,
    reported_at REAL
);
CREATE INDEX IF NOT EXISTS alerts_route ON alerts (route, kind, created_at);
CREATE INDEX IF NOT EXISTS alerts_event ON alerts (event_id);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id TEXT NOT NULL REFERENCES alerts (id),
    channel TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT,
    PRIMARY KEY (alert_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (channel, state, next_at);
"""


@dataclass(frozen=True)
class Alert:
    """One alert as stored: what to send (`slack` payload, `plain` title/body/level)."""

    id: str
    key: str
    kind: str
    event_id: str | None
    created_at: float
    notice: str | None
    slack: dict[str, Any]
    plain: dict[str, Any]
    route: Route
    state: AlertState


@dataclass(frozen=True)
class Delivery:
    """One alert due on one channel."""

    alert: Alert
    channel: str
    attempts: int


@dataclass(frozen=True)
class AlertCounts:
    """How many alerts are in each state, for `taxiops status`."""

    pending: int = 0
    sent: int = 0
    undeliverable: int = 0
    grouped: int = 0  # alerts told in a grouped message instead of one of their own


class Outbox:
    """The alert outbox at `path` (created on first use, WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            if not self._ready:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                self._ready = True
            db.execute("PRAGMA synchronous=FULL")  # a committed alert survives a power cut
            if write:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            else:
                yield db
        finally:
            db.close()

    # --- the notifier block's side --------------------------------------------------

    def enqueue(
        self,
        *,
        key: str,
        kind: str,
        slack: dict[str, Any],
        plain: dict[str, Any],
        notice: str | None = None,
        event_id: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Keep an alert for delivery; False when one with `key` is already kept."""
        with self._connect(write=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO alerts (id, key, kind, event_id, created_at, notice, "
                "slack, plain) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(uuid.uuid4()),
                    key,
                    kind,
                    event_id,
                    time.time() if now is None else now,
                    notice,
                    json.dumps(slack),
                    json.dumps(plain),
                ),
            )
            return cursor.rowcount == 1

    # --- the dispatcher's side ------------------------------------------------------

    def route_new(
        self, channels: Sequence[str], *, storm_count: int, window_seconds: float, now: float
    ) -> int:
        """Route each new alert, oldest first: while fewer than `storm_count` alerts of its
        kind arrived within `window_seconds` before it, it goes alone (one delivery per
        channel); otherwise it is held in its kind's open group, which closes one window
        after it opened. Returns how many were routed."""
        with self._connect(write=True) as db:
            fresh = db.execute(
                "SELECT id, kind, created_at FROM alerts WHERE route = 'new' ORDER BY created_at"
            ).fetchall()
            for row in fresh:
                recent = db.execute(
                    "SELECT COUNT(*) FROM alerts WHERE kind = ? AND route IN ('single', 'held') "
                    "AND created_at > ?",
                    (row["kind"], row["created_at"] - window_seconds),
                ).fetchone()[0]
                if recent < storm_count:
                    db.execute("UPDATE alerts SET route = 'single' WHERE id = ?", (row["id"],))
                    _add_deliveries(db, row["id"], channels, now)
                    continue
                group = db.execute(
                    "SELECT id FROM alerts WHERE route = 'group' AND kind = ? AND slack IS NULL",
                    (row["kind"],),
                ).fetchone()
                group_id = group["id"] if group is not None else _open_group(db, row, now)
                if group is None:
                    db.execute(
                        "UPDATE alerts SET due_at = ? WHERE id = ?",
                        (now + window_seconds, group_id),
                    )
                db.execute(
                    "UPDATE alerts SET route = 'held', group_id = ? WHERE id = ?",
                    (group_id, row["id"]),
                )
            return len(fresh)

    def due_groups(self, now: float) -> list[tuple[str, list[Alert]]]:
        """Open groups whose window has ended, each with the alerts it holds."""
        with self._connect() as db:
            groups = db.execute(
                "SELECT id FROM alerts WHERE route = 'group' AND slack IS NULL AND due_at <= ?",
                (now,),
            ).fetchall()
            return [
                (
                    group["id"],
                    [
                        _alert(row)
                        for row in db.execute(
                            "SELECT * FROM alerts WHERE group_id = ? ORDER BY created_at",
                            (group["id"],),
                        )
                    ],
                )
                for group in groups
            ]

    def close_group(
        self,
        group_id: str,
        *,
        slack: dict[str, Any],
        plain: dict[str, Any],
        channels: Sequence[str],
        now: float,
    ) -> None:
        """Give a group its grouped message and queue it on every channel."""
        with self._connect(write=True) as db:
            db.execute(
                "UPDATE alerts SET slack = ?, plain = ?, due_at = NULL WHERE id = ?",
                (json.dumps(slack), json.dumps(plain), group_id),
            )
            _add_deliveries(db, group_id, channels, now)

    def next_delivery(self, channel: str, now: float) -> Delivery | None:
        """The delivery to try next on `channel`: due ones of kinds not in a storm (no open
        group) first, then the oldest."""
        with self._connect() as db:
            row = db.execute(
                "SELECT a.*, d.channel, d.attempts FROM deliveries d JOIN alerts a "
                "ON a.id = d.alert_id WHERE d.channel = ? AND d.state = 'pending' "
                "AND d.next_at <= ? ORDER BY a.kind IN (SELECT kind FROM alerts "
                "WHERE route = 'group' AND slack IS NULL), a.created_at LIMIT 1",
                (channel, now),
            ).fetchone()
        if row is None:
            return None
        return Delivery(_alert(row), row["channel"], row["attempts"])

    def next_due_at(self, channel: str) -> float | None:
        """When the earliest pending delivery on `channel` is due, if any is pending."""
        with self._connect() as db:
            value = db.execute(
                "SELECT MIN(next_at) FROM deliveries WHERE channel = ? AND state = 'pending'",
                (channel,),
            ).fetchone()[0]
        return None if value is None else float(value)

    def mark_sent(self, alert_id: str, channel: str, now: float) -> None:
        """The receiver answered 2xx: this delivery is done (and the alert, if all are)."""
        with self._connect(write=True) as db:
            db.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE alert_id = ? AND channel = ?",
                (now, alert_id, channel),
            )
            _settle(db, alert_id, now)

    def mark_failed(self, alert_id: str, channel: str, *, error: str, retry_at: float) -> None:
        """This try failed; try again at `retry_at`."""
        with self._connect(write=True) as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_at = ? "
                "WHERE alert_id = ? AND channel = ? AND state = 'pending'",
                (error[:500], retry_at, alert_id, channel),
            )

    def expire(self, *, max_age_seconds: float, now: float) -> int:
        """Give up on deliveries of alerts older than `max_age_seconds`; returns how many
        alerts became undeliverable."""
        cutoff = now - max_age_seconds
        with self._connect(write=True) as db:
            stale = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM alerts WHERE state = 'pending' AND route != 'held' "
                    "AND created_at < ?",
                    (cutoff,),
                )
            ]
            for alert_id in stale:
                db.execute(
                    "UPDATE deliveries SET state = 'undeliverable', "
                    "last_error = COALESCE(last_error, 'never tried') "
                    "WHERE alert_id = ? AND state = 'pending'",
                    (alert_id,),
                )
                db.execute(
                    "UPDATE alerts SET state = 'undeliverable', done_at = ? WHERE id = ?",
                    (now, alert_id),
                )
                _settle_members(db, alert_id, "undeliverable", now)
            return len(stale)

    def unreported(self) -> list[tuple[Alert, list[str]]]:
        """Undeliverable alerts not yet reported as an event, with their last errors."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM alerts WHERE state = 'undeliverable' AND reported_at IS NULL "
                "AND route != 'held' ORDER BY created_at"
            ).fetchall()
            return [
                (
                    _alert(row),
                    [
                        f"{d['channel']}: {d['last_error']}"
                        for d in db.execute(
                            "SELECT channel, last_error FROM deliveries "
                            "WHERE alert_id = ? AND state = 'undeliverable'",
                            (row["id"],),
                        )
                    ],
                )
                for row in rows
            ]

    def mark_reported(self, alert_id: str, now: float) -> None:
        with self._connect(write=True) as db:
            db.execute("UPDATE alerts SET reported_at = ? WHERE id = ?", (now, alert_id))

    # --- reading back, for `taxiops status` and tests -----------------------------

    def states_by_event(self, event_ids: Iterable[str]) -> dict[str, str]:
        """The delivery state of the alert each event id triggered: `pending`, `sent`,
        `undeliverable`, or those followed by ` (grouped)` when a storm message told it."""
        wanted = list(event_ids)
        found: dict[str, str] = {}
        with self._connect() as db:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT event_id, state, route FROM alerts WHERE event_id IN ({marks})",
                    chunk,
                ):
                    suffix = " (grouped)" if row["route"] == "held" else ""
                    found[row["event_id"]] = f"{row['state']}{suffix}"
        return found

    def counts(self) -> AlertCounts:
        """Alerts by state (a group's members counted once each, the group itself not)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT state, route = 'held' AS held, COUNT(*) AS n FROM alerts "
                "WHERE route != 'group' GROUP BY state, held"
            ).fetchall()
        totals: dict[str, int] = {"pending": 0, "sent": 0, "undeliverable": 0, "grouped": 0}
        for row in rows:
            totals[row["state"]] += row["n"]
            if row["held"]:
                totals["grouped"] += row["n"]
        return AlertCounts(**totals)

    def undeliverable(self) -> list[Alert]:
        """Alerts given up on (groups included, their members not), oldest first."""
        with self._connect() as db:
            return [
                _alert(row)
                for row in db.execute(
                    "SELECT * FROM alerts WHERE state = 'undeliverable' AND route != 'held' "
                    "ORDER BY created_at"
                )
            ]

    def alerts(self) -> list[Alert]:
        """Every alert, oldest first."""
        with self._connect() as db:
            return [_alert(row) for row in db.execute("SELECT * FROM alerts ORDER BY created_at")]


def _add_deliveries(
    db: sqlite3.Connection, alert_id: str, channels: Sequence[str], now: float
) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO deliveries (alert_id, channel, next_at) VALUES (?, ?, ?)",
        [(alert_id, channel, now) for channel in channels],
    )


def _open_group(db: sqlite3.Connection, first: sqlite3.Row, now: float) -> str:
    group_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO alerts (id, key, kind, created_at, route) VALUES (?, ?, ?, ?, 'group')",
        (group_id, f"group:{group_id}", first["kind"], now),
    )
    return group_id


def _settle(db: sqlite3.Connection, alert_id: str, now: float) -> None:
    """An alert with no pending delivery left is sent (or undeliverable if one gave up)."""
    counts = {
        row["state"]: row["n"]
        for row in db.execute(
            "SELECT state, COUNT(*) AS n FROM deliveries WHERE alert_id = ? GROUP BY state",
            (alert_id,),
        )
    }
    if counts.get("pending"):
        return
    state = "undeliverable" if counts.get("undeliverable") else "sent"
    db.execute(
        "UPDATE alerts SET state = ?, done_at = ? WHERE id = ? AND state = 'pending'",
        (state, now, alert_id),
    )
    _settle_members(db, alert_id, state, now)


def _settle_members(db: sqlite3.Connection, group_id: str, state: str, now: float) -> None:
    db.execute(
        "UPDATE alerts SET state = ?, done_at = ? WHERE group_id = ? AND state = 'pending'",
        (state, now, group_id),
    )


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(
        id=row["id"],
        key=row["key"],
        kind=row["kind"],
        event_id=row["event_id"],
        created_at=row["created_at"],
        notice=row["notice"],
        slack=json.loads(row["slack"]) if row["slack"] else {},
        plain=json.loads(row["plain"]) if row["plain"] else {},
        route=row["route"],
        state=row["state"],
    )
