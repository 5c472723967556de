"""`python -m taxiops.app.prefect_server ARGS`: Prefect's CLI (`prefect ARGS`), with every
transaction on a SQLite database begun IMMEDIATE.

Prefect begins its transactions DEFERRED unless they lock rows (`with_for_update`). A
deferred transaction that has read, and then writes after another connection committed,
fails at once with "database is locked", which the API answers 503: SQLite does not wait
out its busy timeout for a snapshot it cannot upgrade. Begun IMMEDIATE, a transaction takes
the write lock first, so a second writer waits (Prefect sets a 60 s busy timeout) instead
of failing. Reads outside transactions are untouched, and PostgreSQL is not affected.
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction


def begin_sqlite_transactions_immediately() -> None:
    """Make Prefect's SQLite configuration begin every transaction IMMEDIATE."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred_or_immediate = AioSqliteConfiguration.begin_transaction
    if getattr(deferred_or_immediate, "always_immediate", False):
        return

    def begin_transaction(
        self: AioSqliteConfiguration, session: AsyncSession, with_for_update: bool = False
    ) -> AbstractAsyncContextManager[AsyncSessionTransaction]:
        return deferred_or_immediate(self, session, with_for_update=True)

    begin_transaction.always_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign,assignment]


def main() -> None:
    """Run Prefect's CLI on this process's arguments."""
    from prefect.cli import app

    begin_sqlite_transactions_immediately()
    sys.argv[0] = "prefect"
    app()


if __name__ == "__main__":
    main()
