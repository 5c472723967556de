"""Prefect's SQLite transactions, as `taxiops.app.prefect_server` starts the server: each
holds the write lock from its first statement, so another writer waits instead of failing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from taxiops.app.prefect_server import begin_sqlite_transactions_immediately


def _write_lock_is_free(path: Path) -> bool:
    """Whether another connection could begin writing to `path` right now (without waiting)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()
    return True


async def _holds_write_lock_after_a_read(path: Path) -> bool:
    """Whether a transaction Prefect begins (not `with_for_update`) holds the write lock once
    it has read, as a deferred one does not."""
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
    engine = await config.engine()
    session = await config.session(engine)
    try:
        async with session, config.begin_transaction(session):
            await session.execute(sa.text("SELECT count(*) FROM sqlite_master"))
            return not _write_lock_is_free(path)
    finally:
        await engine.dispose()


async def test_every_transaction_takes_the_write_lock_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restored after the test: this process's Prefect stays as installed.
    monkeypatch.setattr(
        AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction
    )
    assert not await _holds_write_lock_after_a_read(tmp_path / "deferred.db")

    begin_sqlite_transactions_immediately()
    begin_sqlite_transactions_immediately()  # a second call changes nothing
    assert await _holds_write_lock_after_a_read(tmp_path / "immediate.db")
    assert _write_lock_is_free(tmp_path / "immediate.db"), "released at the end"
