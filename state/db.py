"""The tiny dialect layer: a `Db` connection interface and its SQLite adapter.

Plain SQL rather than SQLAlchemy Core, deliberately: the store needs about thirty statements,
all of them portable between SQLite 3.35+ and PostgreSQL (ON CONFLICT, RETURNING),
so the only real differences are placeholders, column types, how a write transaction starts
and which driver errors mean "try again". That fits in two small adapters and saves a large
dependency and its typing gaps. Queries are written with `?` placeholders; adapters rewrite.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from schema.errors import TransientError
from state.errors import StateError

Row = tuple[Any, ...]


class Db(Protocol):
    """One connection, used by one thread; transactions are explicit (autocommit otherwise)."""

    dialect: str
    description: str
    types: Mapping[str, str]

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...

    def begin(self, write: bool) -> None: ...

    def lock_schema(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


SQLITE_TYPES: Mapping[str, str] = {
    # AUTOINCREMENT so ids of deleted history rows are never handed out again.
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "float": "REAL",
    "int": "INTEGER",
}


class SqliteDb:
    """SQLite in WAL mode: readers never block the writer; writers queue on the busy timeout."""

    dialect = "sqlite"
    types = SQLITE_TYPES

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.description = f"sqlite:///{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the driver never opens transactions behind our back,
            # so BEGIN IMMEDIATE below is the only way a write starts.
            self._conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state file {path}: {exc}") from exc
        try:
            self._wal(busy_timeout)
            # FULL: a committed apply step survives power loss too, not just a killed process;
            # the store commits once per provider action, so the fsync cost does not matter.
            self.execute("PRAGMA synchronous=FULL")
        except BaseException:
            self._conn.close()
            raise

    def _wal(self, busy_timeout: float) -> None:
        """Switch to WAL. SQLite may answer SQLITE_BUSY at once, without its busy handler, when
        processes open a new file together (found by the racing-openers test), so retry here
        within the same busy timeout."""
        deadline = time.monotonic() + busy_timeout
        delay = 0.01
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
                return
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and (
                    "locked" in str(exc) or "busy" in str(exc)
                )
                if not busy or time.monotonic() + delay > deadline:
                    raise _translate_sqlite(exc, self.description) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise _translate_sqlite(exc, self.description) from exc

    def begin(self, write: bool) -> None:
        # IMMEDIATE takes the write lock up front, so two writers never both read
        # "unlocked" and then race to upgrade; the loser waits on the busy timeout.
        self.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def lock_schema(self) -> None:
        """BEGIN IMMEDIATE already excludes every other writer, migrations included."""

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        # Rollback runs while another error propagates; its own failure must not mask that.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


def _translate_sqlite(exc: sqlite3.Error, where: str) -> Exception:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return TransientError(f"state store {where} is busy ({text}); try again", 1.0)
    return StateError(f"state store {where}: {text}")
