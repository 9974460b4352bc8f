"""Conformance: blocked placements, wildcard matching and expiry, on every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from state import PlacementKey, Store
from state.factory import open_db

QUERY = PlacementKey(
    infra="aws",
    region="us-east-1",
    zone="us-east-1a",
    instance_type="p4d.24xlarge",
    use_spot=True,
    accelerators="A100:8",
)


@pytest.mark.parametrize(
    ("block", "blocked"),
    [
        (QUERY, True),
        (PlacementKey(infra="aws"), True),
        (PlacementKey(infra="aws", region="us-east-1"), True),
        (PlacementKey(infra="aws", region="us-east-1", zone="us-east-1b"), False),
        (PlacementKey(infra="gcp"), False),
        (PlacementKey(instance_type="p4d.24xlarge"), True),
        (PlacementKey(infra="aws", use_spot=True), True),
        (PlacementKey(infra="aws", use_spot=False), False),
        (PlacementKey(accelerators="H100:8"), False),
        (PlacementKey(), True),
    ],
)
def test_a_block_matches_when_each_field_it_names_is_equal(
    store: Store, block: PlacementKey, blocked: bool
) -> None:
    store.block_placement(block, "no capacity", ttl=600)
    assert store.is_blocked(QUERY) is blocked


def test_a_field_the_query_does_not_know_matches_only_a_wildcard(store: Store) -> None:
    store.block_placement(PlacementKey(infra="aws", zone="us-east-1a"), "no capacity", ttl=600)
    assert not store.is_blocked(PlacementKey(infra="aws", region="us-east-1"))
    assert store.is_blocked(PlacementKey(infra="aws", region="us-east-1", zone="us-east-1a"))


def test_a_block_expires(store: Store, clock: Any) -> None:
    block = store.block_placement(PlacementKey(infra="aws", region="us-east-1"), "ICE", ttl=300)
    assert (block.blocked_at, block.expires_at) == (clock.now, clock.now + 300)
    assert store.find_block(QUERY) == block
    assert store.list_blocked() == [block]
    clock.advance(300)
    assert store.find_block(QUERY) is None
    assert store.list_blocked() == []


def test_find_block_returns_the_longest_lasting_match(store: Store) -> None:
    store.block_placement(PlacementKey(infra="aws"), "short", ttl=60)
    store.block_placement(PlacementKey(infra="aws", region="us-east-1"), "long", ttl=600)
    found = store.find_block(QUERY)
    assert found is not None and found.reason == "long"
    assert found.placement == PlacementKey(infra="aws", region="us-east-1")


def test_blocking_drops_expired_blocks(
    store: Store, clock: Any, store_url: str, tmp_path: Path
) -> None:
    store.block_placement(PlacementKey(infra="aws"), "old", ttl=10)
    clock.advance(20)
    store.block_placement(PlacementKey(infra="gcp"), "new", ttl=10)
    db = open_db(store_url, tmp_path)
    try:
        assert db.execute("SELECT reason FROM blocked_placements") == [("new",)]
    finally:
        db.close()
