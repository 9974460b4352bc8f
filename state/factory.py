"""`open_store`: turn a state URL (or nothing) into an open `Store`.

Accepted: None (SQLite at `<home>/state.db`); `sqlite:///path.db` as SQLAlchemy spells it
(three slashes, then the path: `sqlite:////abs/path.db` is absolute, `sqlite:///rel.db`
relative); a bare file path; `postgresql://...` / `postgres://...` (a libpq URL;
`?options=-csearch_path%3Dname` selects a schema, so several states can share a database).
"""

from __future__ import annotations

from pathlib import Path

from state.db import Db, SqliteDb
from state.errors import StateError
from state.records import Clock, system_clock
from state.sql_store import SqlStore
from state.store import Store

DEFAULT_FILE = "state.db"


def open_store(url: str | None, home: Path, *, clock: Clock = system_clock) -> Store:
    """Open (creating and migrating as needed) the store `url` names."""
    return SqlStore(open_db(url, home), clock)


def open_db(url: str | None, home: Path) -> Db:
    """The raw connection behind a store URL (migrations and tests use it directly)."""
    if not url:
        return SqliteDb(home / DEFAULT_FILE)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so SQLite users never pay for loading the PostgreSQL driver.
        from state.postgres import PostgresDb

        return PostgresDb(url)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise StateError(
                f"state URL {url!r} names no file: write sqlite:////absolute/state.db "
                "or sqlite:///relative/state.db"
            )
        return SqliteDb(Path(path).expanduser())
    if "://" in url:
        raise StateError(
            f"state URL {url!r} is not supported: use sqlite:////path/to/state.db, a file path, "
            "or postgresql://user@host:5432/dbname"
        )
    return SqliteDb(Path(url).expanduser())
