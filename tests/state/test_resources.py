"""Conformance: resources, serial and lineage, on every backend."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from state import Resource, StateError, Store
from state.migrations import SCHEMA_VERSION


def job(name: str, spec_hash: str = "h1", **fields: Any) -> Resource:
    return Resource(address=f"job.{name}", kind="job", spec_hash=spec_hash, **fields)


def test_a_new_store_has_serial_zero_and_a_lineage_that_stays(
    open_at: Callable[[], Store],
) -> None:
    first = open_at().meta()
    assert first.serial == 0
    assert first.schema_version == SCHEMA_VERSION
    assert uuid.UUID(first.lineage)
    assert open_at().meta() == first


def test_put_then_get_round_trips_every_field(store: Store, clock: Any) -> None:
    resource = job(
        "train-bert",
        spec={"resources": {"accelerators": "A100:8"}, "name": "bért", "n": [1, 2.5, None]},
        placement={"infra": "aws", "region": "us-east-1", "price": 32.77},
        handles={"instance_ids": ["i-1", "i-2"]},
        status="running",
    )
    stored = store.put_resource(resource)
    assert stored == Resource(
        **{**resource.__dict__, "created_at": clock.now, "updated_at": clock.now}
    )
    assert store.get_resource("job.train-bert") == stored
    assert store.get_resource("job.missing") is None


def test_every_change_grows_the_serial_and_an_identical_write_does_not(
    store: Store, clock: Any
) -> None:
    store.put_resource(job("a"))
    assert store.meta().serial == 1
    clock.advance(10)
    store.put_resource(job("a"))
    assert store.meta().serial == 1
    assert store.get_resource("job.a").updated_at == clock.now - 10  # type: ignore[union-attr]
    store.put_resource(job("a", spec_hash="h2", status="running"))
    assert store.meta().serial == 2
    assert store.delete_resource("job.a") is True
    assert store.meta().serial == 3
    assert store.delete_resource("job.a") is False
    assert store.meta().serial == 3


def test_an_update_keeps_created_at_and_moves_updated_at(store: Store, clock: Any) -> None:
    created = store.put_resource(job("a")).created_at
    clock.advance(60)
    updated = store.put_resource(job("a", status="running"))
    assert (updated.created_at, updated.updated_at) == (created, created + 60)


def test_list_is_sorted_by_address_and_filters_by_kind(store: Store) -> None:
    store.put_resources(
        [
            job("b"),
            job("a"),
            Resource(address="service.web", kind="service", spec_hash="s"),
            Resource(address="cluster.dev", kind="cluster", spec_hash="c", placement=None),
        ]
    )
    assert [r.address for r in store.list_resources()] == [
        "cluster.dev",
        "job.a",
        "job.b",
        "service.web",
    ]
    assert [r.address for r in store.list_resources("job")] == ["job.a", "job.b"]
    assert store.list_resources("nothing") == []


def test_a_batch_is_one_serial_step(store: Store) -> None:
    assert store.put_resources([job("a"), job("b"), job("c")]) == 1
    assert store.meta().serial == 1
    assert store.put_resources([]) == 1


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    store.put_resource(job("a"))
    with pytest.raises(StateError, match="address and a kind"):
        store.put_resources([job("a", status="new"), Resource("", "job", "h"), job("z")])
    assert store.meta().serial == 1
    assert [r.status for r in store.list_resources()] == ["unknown"]


def test_a_second_connection_sees_committed_changes(open_at: Callable[[], Store]) -> None:
    writer, reader = open_at(), open_at()
    writer.put_resource(job("a", status="running"))
    assert reader.meta().serial == 1
    assert reader.get_resource("job.a").status == "running"  # type: ignore[union-attr]


def test_url_hides_a_password() -> None:
    from state.postgres import redact_url

    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
