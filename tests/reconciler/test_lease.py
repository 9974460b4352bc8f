"""The CLI's hold on the state lock: renewed for as long as an apply runs (however long that is),
released after, and fenced: once someone else holds the lock, the apply's writes are refused."""

from __future__ import annotations

import time
from pathlib import Path

import click
import pytest

from reconciler.cli.lease import locked
from schema.errors import LockHeldError
from state import LockLostError, Resource, Store, open_store


def _opener(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "state.db"), tmp_path)


def test_the_lock_is_renewed_past_its_lease_and_released_after(tmp_path: Path) -> None:
    with _opener(tmp_path) as store, _opener(tmp_path) as other:
        with locked(store, "apply", lambda: _opener(tmp_path), lease_s=1.0):
            held = store.current_lock()
            assert held is not None and held.operation == "apply"
            time.sleep(2.5)  # two and a half leases: only renewal keeps it
            renewed = other.current_lock()
            assert renewed is not None and renewed.lock_id == held.lock_id
            assert renewed.expires_at > held.expires_at + 1.0
            store.put_resource(Resource(address="job.a", kind="job", spec_hash="h"))
        assert other.current_lock() is None
        other.acquire_lock("bob", "apply")


def test_a_second_apply_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with (
        _opener(tmp_path) as store,
        _opener(tmp_path) as other,
        locked(store, "apply", lambda: _opener(tmp_path), lease_s=60),
        pytest.raises(click.ClickException, match="skyform state unlock"),
        locked(other, "apply", lambda: _opener(tmp_path)),
    ):
        pass


def test_writes_after_the_lock_was_broken_and_taken_are_refused(tmp_path: Path) -> None:
    with _opener(tmp_path) as store, _opener(tmp_path) as other:
        with locked(store, "apply", lambda: _opener(tmp_path), lease_s=60):
            held = store.current_lock()
            assert held is not None
            # `skyform state unlock` elsewhere, then another apply takes the lock.
            assert other.release_lock(held.lock_id)
            other.acquire_lock("bob", "apply")
            with pytest.raises(LockLostError, match="bob"):
                store.record_intent("k", "job.a", "create")
            assert other.get_intent("k") is None
        with pytest.raises(LockHeldError):
            store.acquire_lock("alice", "apply")  # bob's lock was left alone
