"""PostgreSQL: a process frozen in the middle of a write transaction (SIGSTOP, a paused VM)
does not stall everyone else. The server ends its idle transaction, so another replica can take
the lock, and the frozen one finds its session gone when it wakes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schema.errors import SkyformError
from state import open_store
from state.factory import open_db
from state.postgres import IDLE_IN_TRANSACTION_S

pytestmark = pytest.mark.postgres


def test_a_writer_frozen_mid_transaction_does_not_block_the_lock(
    pg_url: str, tmp_path: Path
) -> None:
    with open_store(pg_url, tmp_path):  # creates the schema
        pass
    frozen = open_db(pg_url, tmp_path)
    try:
        frozen.begin(write=True)
        frozen.execute("SELECT serial FROM meta WHERE id = 1 FOR UPDATE")  # then it "freezes"
        started = time.monotonic()
        with open_store(pg_url, tmp_path) as other:
            lock = other.acquire_lock("replica-b", "reconcile", ttl=30)
        waited = time.monotonic() - started
        assert lock.holder == "replica-b"
        assert waited < IDLE_IN_TRANSACTION_S + 5
        with pytest.raises(SkyformError):  # woken: its session and transaction are gone
            frozen.execute("SELECT 1")
    finally:
        frozen.close()
