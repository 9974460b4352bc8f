"""Fixtures for the state-store tests: both backends, a controllable clock, fresh stores.

PostgreSQL tests run in one database created for this test session (dropped at the end), each
test in its own schema, so tests never see each other's rows and need no server set-up.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

# pytest puts tests/ on sys.path, where this directory reads as a namespace package `state`
# that hides the real one (the editable install's finder comes after the path finder).
# Putting the checkout first fixes that; `pythonpath = ["."]` in pytest's settings would too.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from state import Store, open_store  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class FakeClock:
    """A clock that moves only when told: lets tests cross an expiry without sleeping."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A fresh database for this session, or None when no server answers."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    name = f"skyform_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        _drop_abandoned(admin)
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_abandoned(admin: psycopg.Connection[tuple[object, ...]]) -> None:
    """Drop test databases left by sessions that were killed before their teardown ran."""
    names = admin.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'skyform\\_test\\_%'"
    ).fetchall()
    for (name,) in names:
        pid = str(name).split("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_schema_url(database: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{database}?options=-csearch_path%3D{schema}"
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_url(pg_database: str | None) -> Iterator[str]:
    """A PostgreSQL store URL with an empty schema of its own."""
    if pg_database is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (run scripts/ensure-postgres.sh)")
    yield from _pg_schema_url(pg_database)


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_at(store_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[], Store]]:
    """Opens another store on the same backend (another connection, as another process would)."""
    opened: list[Store] = []

    def open_one() -> Store:
        store = open_store(store_url, tmp_path, clock=clock)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_at: Callable[[], Store]) -> Store:
    return open_at()
