"""Conformance: the state lock as a lease (holder, expiry, heartbeat, takeover), every backend."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schema.errors import LockHeldError
from state import LockInfo, LockLostError, Resource, Store

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_lock_refuses_everyone_else_and_names_the_holder(
    open_at: Callable[[], Store],
) -> None:
    mine, theirs = open_at(), open_at()
    lock = mine.acquire_lock("alice", "apply", ttl=60)
    with pytest.raises(LockHeldError) as refused:
        theirs.acquire_lock("bob", "apply")
    holder = refused.value.holder
    assert isinstance(holder, LockInfo)
    assert (holder.lock_id, holder.holder, holder.operation) == (lock.lock_id, "alice", "apply")
    assert "alice" in str(refused.value)
    assert f"skyform state unlock {lock.lock_id}" in str(refused.value)
    assert theirs.current_lock() == lock


def test_the_same_holder_cannot_take_it_twice(store: Store) -> None:
    store.acquire_lock("alice", "apply")
    with pytest.raises(LockHeldError):
        store.acquire_lock("alice", "apply")


def test_release_frees_the_lock_and_only_for_its_own_id(store: Store) -> None:
    lock = store.acquire_lock("alice", "apply")
    assert store.release_lock("not-the-id") is False
    assert store.current_lock() == lock
    assert store.release_lock(lock.lock_id) is True
    assert store.current_lock() is None
    assert store.release_lock(lock.lock_id) is False
    assert store.acquire_lock("bob", "plan").holder == "bob"


def test_an_expired_lock_is_taken_over_and_the_takeover_is_recorded(
    store: Store, clock: Any
) -> None:
    old = store.acquire_lock("alice", "apply", ttl=30)
    clock.advance(29.9)
    with pytest.raises(LockHeldError):
        store.acquire_lock("bob", "apply")
    clock.advance(0.1)
    new = store.acquire_lock("bob", "apply")
    assert new.lock_id != old.lock_id
    assert "took over" in store.events("state")[0].message


def test_heartbeat_extends_the_lease(store: Store, clock: Any) -> None:
    lock = store.acquire_lock("alice", "apply", ttl=30)
    clock.advance(20)
    renewed = store.heartbeat(lock.lock_id)
    assert (renewed.heartbeat_at, renewed.expires_at) == (clock.now, clock.now + 30)
    clock.advance(20)  # past the first expiry, inside the renewed one
    with pytest.raises(LockHeldError):
        store.acquire_lock("bob", "apply")
    assert store.heartbeat(lock.lock_id, ttl=5).expires_at == clock.now + 5


def test_heartbeat_after_a_takeover_says_the_lock_is_lost(
    open_at: Callable[[], Store], clock: Any
) -> None:
    mine, theirs = open_at(), open_at()
    lock = mine.acquire_lock("alice", "apply", ttl=10)
    clock.advance(11)
    theirs.acquire_lock("bob", "apply")
    with pytest.raises(LockLostError, match="bob"):
        mine.heartbeat(lock.lock_id)
    assert mine.release_lock(lock.lock_id) is False
    assert theirs.current_lock().holder == "bob"  # type: ignore[union-attr]


def test_an_expired_lease_nobody_took_can_still_be_renewed(store: Store, clock: Any) -> None:
    lock = store.acquire_lock("alice", "apply", ttl=10)
    clock.advance(11)
    assert store.heartbeat(lock.lock_id).expires_at == clock.now + 10


def test_a_lease_must_have_a_positive_ttl(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_lock("alice", "apply", ttl=0)


def test_a_dead_holder_on_this_host_loses_its_lock_before_expiry(
    store: Store, store_url: str, tmp_path: Any
) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        "from pathlib import Path; from state import open_store;"
        "s = open_store(sys.argv[1], Path(sys.argv[2]));"
        "print(s.acquire_lock('ghost', 'apply', ttl=3600).pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, store_url, str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    ghost = store.current_lock()
    assert ghost is not None and ghost.pid == int(done.stdout)
    # subprocess.run has reaped the child, so its pid no longer exists (no zombie).
    assert store.acquire_lock("alice", "apply").holder == "alice"


def test_a_fenced_store_writes_only_while_its_lease_is_the_current_lock(
    open_at: Callable[[], Store], clock: Any
) -> None:
    leader, standby = open_at(), open_at()
    lease = leader.acquire_lock("replica-a", "reconcile", ttl=30)
    leader.fence(lease.lock_id)
    leader.put_resource(Resource(address="job.a", kind="job", spec_hash="h"))
    # Expired but not yet taken: still ours, as a heartbeat would find it.
    clock.advance(31)
    leader.record_intent("k1", "job.a", "create")
    # The leader "froze"; the standby took the lease. The woken leader's writes are refused,
    # whole: nothing of them lands.
    standby.acquire_lock("replica-b", "reconcile", ttl=30)
    serial = standby.meta().serial
    with pytest.raises(LockLostError, match="replica-b"):
        leader.put_resource(Resource(address="job.b", kind="job", spec_hash="h"))
    with pytest.raises(LockLostError):
        leader.record_intent("k2", "job.b", "create")
    assert standby.get_resource("job.b") is None and standby.get_intent("k2") is None
    assert standby.meta().serial == serial
    # Unfenced (the CLI's `state unlock` path, say) it writes again.
    leader.fence(None)
    leader.put_resource(Resource(address="job.b", kind="job", spec_hash="h"))
    assert standby.get_resource("job.b") is not None


def test_releasing_the_fenced_lease_ends_the_fence(store: Store) -> None:
    lease = store.acquire_lock("alice", "apply")
    store.fence(lease.lock_id)
    assert store.release_lock(lease.lock_id)
    store.put_resource(Resource(address="job.a", kind="job", spec_hash="h"))
    assert store.get_resource("job.a") is not None
