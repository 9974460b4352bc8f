"""Schema migrations on every backend: an older store is upgraded in place with nothing lost;
a store newer than the code is refused with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from state import PlacementKey, StateVersionError, open_store
from state.factory import open_db
from state.migrations import MIGRATIONS, SCHEMA_VERSION
from state.sql_store import SqlStore


def versions(store_url: str, home: Path) -> list[int]:
    db = open_db(store_url, home)
    try:
        return [int(v) for (v,) in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        db.close()


def test_the_migrations_are_numbered_one_up_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_a_version_1_store_is_upgraded_with_nothing_lost(
    store_url: str, tmp_path: Path, clock: Any
) -> None:
    # Build the store exactly as the first release did, and write what it could write.
    old = SqlStore(open_db(store_url, tmp_path), clock, schema_version=1)
    assert old.meta().schema_version == 1
    from state import Resource

    old.put_resource(Resource("job.a", "job", "h1", {"run": "x"}, {"infra": "aws"}, {"id": 1}))
    lock = old.acquire_lock("alice", "apply", ttl=600)
    run = old.begin_run("apply", "alice", "abc", "p1")
    old.finish_run(run.id, "succeeded")
    lineage = old.meta().lineage
    db = open_db(store_url, tmp_path)
    db.execute(
        "INSERT INTO intents (key, address, action, payload, status, created_at)"
        " VALUES ('k1', 'job.a', 'create', '{}', 'pending', 1.0)"
    )
    db.close()
    old.close()
    assert versions(store_url, tmp_path) == [1]

    with open_store(store_url, tmp_path, clock=clock) as new:
        meta = new.meta()
        assert (meta.lineage, meta.serial, meta.schema_version) == (lineage, 1, SCHEMA_VERSION)
        resource = new.get_resource("job.a")
        assert resource is not None and resource.handles == {"id": 1}
        assert new.current_lock() == lock
        assert [(r.id, r.outcome, r.commit) for r in new.history()] == [
            (run.id, "succeeded", "abc")
        ]
        [intent] = new.incomplete_intents()
        assert (intent.key, intent.plan_id) == ("k1", None)
        # What version 2 added works on the upgraded store.
        new.block_placement(PlacementKey(infra="aws"), "ICE", ttl=60)
        assert new.is_blocked(PlacementKey(infra="aws"))
        new.add_event("job.a", "created", "x")
        new.record_intent("k2", "job.a", "delete", plan_id="p2")
    assert versions(store_url, tmp_path) == list(range(1, SCHEMA_VERSION + 1))


def test_reopening_a_current_store_changes_nothing(store_url: str, tmp_path: Path) -> None:
    open_store(store_url, tmp_path).close()
    open_store(store_url, tmp_path).close()
    assert versions(store_url, tmp_path) == list(range(1, SCHEMA_VERSION + 1))


def test_a_store_from_a_newer_skyform_is_refused(store_url: str, tmp_path: Path) -> None:
    open_store(store_url, tmp_path).close()
    db = open_db(store_url, tmp_path)
    db.execute(
        "INSERT INTO schema_version (version, applied_at, description) VALUES (?, 0, 'future')",
        (SCHEMA_VERSION + 7,),
    )
    db.close()
    with pytest.raises(StateVersionError) as refused:
        open_store(store_url, tmp_path)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 7}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert "Upgrade Skyform" in message
    assert versions(store_url, tmp_path)[-1] == SCHEMA_VERSION + 7
