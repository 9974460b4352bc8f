"""Column lists and row <-> record conversions for resources, runs, blocks and events.

JSON columns are TEXT in both dialects (one schema, no JSONB-only features), encoded here.
"""

from __future__ import annotations

import json
from typing import Any

from state.db import Row
from state.records import BlockedPlacement, Event, HistoryEntry, PlacementKey, Resource

RESOURCE_COLUMNS = (
    "address, kind, spec_hash, spec, placement, handles, status, created_at, updated_at"
)
RUN_COLUMNS = (
    "id, operation, who, git_commit, plan_id, outcome, message, serial_before, serial_after,"
    " started_at, finished_at"
)
BLOCK_COLUMNS = (
    "id, infra, region, zone, instance_type, use_spot, accelerators, reason, blocked_at, expires_at"
)
EVENT_COLUMNS = "id, address, at, kind, message"


def dumps(value: object) -> str:
    # Sorted keys: equal values give equal text, so "did anything change" is a string compare.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def resource_params(resource: Resource, created_at: float, updated_at: float) -> tuple[Any, ...]:
    return (
        resource.address,
        resource.kind,
        resource.spec_hash,
        dumps(resource.spec),
        None if resource.placement is None else dumps(resource.placement),
        dumps(resource.handles),
        resource.status,
        created_at,
        updated_at,
    )


def resource_from_row(row: Row) -> Resource:
    return Resource(
        address=row[0],
        kind=row[1],
        spec_hash=row[2],
        spec=json.loads(row[3]),
        placement=None if row[4] is None else json.loads(row[4]),
        handles=json.loads(row[5]),
        status=row[6],
        created_at=float(row[7]),
        updated_at=float(row[8]),
    )


def run_from_row(row: Row) -> HistoryEntry:
    return HistoryEntry(
        id=int(row[0]),
        operation=row[1],
        who=row[2],
        commit=row[3],
        plan_id=row[4],
        outcome=row[5],
        message=row[6],
        serial_before=int(row[7]),
        serial_after=None if row[8] is None else int(row[8]),
        started_at=float(row[9]),
        finished_at=None if row[10] is None else float(row[10]),
    )


def placement_params(key: PlacementKey) -> tuple[Any, ...]:
    spot = None if key.use_spot is None else int(key.use_spot)
    return (key.infra, key.region, key.zone, key.instance_type, spot, key.accelerators)


def block_from_row(row: Row) -> BlockedPlacement:
    return BlockedPlacement(
        id=int(row[0]),
        placement=PlacementKey(
            infra=row[1],
            region=row[2],
            zone=row[3],
            instance_type=row[4],
            use_spot=None if row[5] is None else bool(row[5]),
            accelerators=row[6],
        ),
        reason=row[7],
        blocked_at=float(row[8]),
        expires_at=float(row[9]),
    )


def event_from_row(row: Row) -> Event:
    return Event(id=int(row[0]), address=row[1], at=float(row[2]), kind=row[3], message=row[4])
