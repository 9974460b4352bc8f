"""Conformance: the exported state document and the rules for importing it, every backend."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from schema.errors import LockHeldError
from state import PlacementKey, Resource, StateDocumentError, Store, open_store


def fill(store: Store) -> None:
    store.put_resources(
        [
            Resource("job.a", "job", "h1", {"run": "python train.py"}, {"infra": "aws"}, {}),
            Resource("service.web", "service", "h2", {"replicas": 2}, None, {"ids": [1]}, "ready"),
        ]
    )
    store.record_intent("k1", "job.a", "create", {"n": 1}, plan_id="p1")
    store.record_intent("k2", "job.b", "create")
    store.complete_intent("k2", {"ok": True})
    run = store.begin_run("apply", "alice", "abc", "p1")
    store.finish_run(run.id, "succeeded", "done")
    store.block_placement(PlacementKey(infra="aws", use_spot=True), "ICE", ttl=600)
    store.add_event("job.a", "created", "launched")


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """What must survive a round trip: everything but ids, times of export, and our event."""
    doc = copy.deepcopy(document)
    doc.pop("exported_at")
    for row in doc["history"] + doc["events"] + doc["blocked_placements"]:
        row.pop("id")
    doc["events"] = [e for e in doc["events"] if e["kind"] != "import"]
    return doc


def test_importing_its_own_export_changes_nothing_but_the_serial(store: Store) -> None:
    fill(store)
    exported = json.loads(json.dumps(store.export_state()))
    meta = store.import_state(exported)
    assert (meta.lineage, meta.serial) == (exported["lineage"], exported["serial"] + 1)
    again = store.export_state()
    again["serial"] -= 1
    assert comparable(again) == comparable(exported)
    assert store.events("state")[0].kind == "import"


def test_importing_into_a_blank_store_adopts_the_lineage(
    store: Store, tmp_path: Any, clock: Any
) -> None:
    # The source is always SQLite: on the PostgreSQL run this is the SQLite -> PostgreSQL move.
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}", tmp_path, clock=clock)
    fill(other)
    exported = other.export_state()
    other.close()
    meta = store.import_state(exported)
    assert (meta.lineage, meta.serial) == (exported["lineage"], exported["serial"])
    assert comparable(store.export_state()) == comparable(exported)
    assert [i.key for i in store.incomplete_intents()] == ["k1"]
    assert store.is_blocked(PlacementKey(infra="aws", region="x", use_spot=True))


def test_an_older_serial_is_refused_unless_forced(store: Store) -> None:
    fill(store)
    old = store.export_state()
    store.delete_resource("job.a")
    with pytest.raises(StateDocumentError, match="older"):
        store.import_state(old)
    assert store.get_resource("job.a") is None
    serial = store.meta().serial
    meta = store.import_state(old, force=True)
    assert store.get_resource("job.a") is not None
    assert meta.serial == serial + 1  # forced, yet the serial still only grows


def test_another_lineage_is_refused_unless_forced(store: Store) -> None:
    fill(store)
    foreign = {**store.export_state(), "lineage": "00000000-0000-0000-0000-000000000000"}
    foreign["serial"] += 10
    with pytest.raises(StateDocumentError, match="lineage"):
        store.import_state(foreign)
    assert store.import_state(foreign, force=True).lineage == foreign["lineage"]


def test_import_is_refused_while_someone_else_holds_the_lock(
    open_at: Callable[[], Store],
) -> None:
    store, other = open_at(), open_at()
    document = store.export_state()
    lock = other.acquire_lock("bob", "apply")
    with pytest.raises(LockHeldError):
        store.import_state(document)
    assert other.import_state(document, lock_id=lock.lock_id).serial == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("format"), "not a Skyform state document"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(serial="7"), "serial must be a int"),
        (lambda d: d.update(resources={}), "resources must be a list"),
        (lambda d: d["resources"][0].pop("spec_hash"), r"resources\[0\]: missing field"),
        (lambda d: d["resources"][1].update(spec="x"), r"resources\[1\]\.spec must be dict"),
        (lambda d: d["resources"][0].update(colour=1), "unknown field"),
        (lambda d: d["intents"][0].update(created_at=True), r"intents\[0\]\.created_at"),
        (lambda d: d["blocked_placements"][0]["placement"].update(use_spot="yes"), "use_spot"),
    ],
)
def test_a_malformed_document_is_refused_naming_the_field(
    store: Store, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    fill(store)
    document = store.export_state()
    before = comparable(document)
    change(document)
    with pytest.raises(StateDocumentError, match=message):
        store.import_state(document, force=True)
    assert comparable(store.export_state()) == before
