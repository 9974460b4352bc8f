"""Fixtures for the daemon tests: a PostgreSQL schema of its own (the state tests' database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.state.conftest import _pg_schema_url, pg_database

__all__ = ["pg_database"]


@pytest.fixture
def pg_url(pg_database: str | None) -> Iterator[str]:
    if pg_database is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (run scripts/ensure-postgres.sh)")
    yield from _pg_schema_url(pg_database)
