"""The SQLite counterpart of pgproxy.py: fail the next transaction at a chosen statement.

SQLite runs inside the service's process, so there is no connection to cut:
instead the engine's own events raise ``ConnectionResetError`` (what a lost
connection raises) just before the k-th statement after ``BEGIN IMMEDIATE``,
or just before its COMMIT. The real database then rolls back what the
transaction did so far; the test checks that nothing of it remains. There is
no "after the COMMIT" cut here: the engine has no event between a COMMIT and
its answer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.pgproxy import Cut


class SqliteCutter:
    """``arm(cut)`` / ``disarm()`` / ``fired``, as PgProxy, on one engine's statements."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._cut: Cut | None = None
        self.fired = False
        self._statements: int | None = None  # None: not in a transaction
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before_statement)
        event.listen(sync, "commit", self._before_commit)
        event.listen(sync, "rollback", self._ended)

    def arm(self, cut: Cut) -> None:
        if cut.commit == "after":
            raise ValueError("SQLite: no cut after a COMMIT")
        self._cut, self.fired = cut, False

    def disarm(self) -> None:
        self._cut = None

    def _before_statement(self, conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        if statement.strip().upper().startswith("BEGIN"):
            self._statements = 0
            return
        if self._statements is None:
            return  # a lock-free read, outside any transaction
        self._statements += 1
        if self._cut is not None and self._cut.statement == self._statements:
            self._fire()

    def _before_commit(self, conn: Connection) -> None:
        in_transaction, self._statements = self._statements is not None, None
        if in_transaction and self._cut is not None and self._cut.commit == "before":
            self._fire()

    def _ended(self, conn: Connection) -> None:
        self._statements = None

    def _fire(self) -> None:
        self._cut, self.fired = None, True
        raise ConnectionResetError("cut by the test (tests/support/sqlite_cut.py)")
