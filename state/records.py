"""Plain data the store holds and returns: resources, locks, intents, runs, blocks, events.

These are frozen dataclasses so a caller can never mutate what the store handed back and
believe it was saved; every write goes through a `Store` method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Returns the current time as float epoch seconds; injected so tests control expiry.
Clock = Callable[[], float]

#: JSON object as stored in the spec, placement, handles, payload and result columns.
JSONObject = dict[str, Any]


def system_clock() -> float:
    return time.time()


@dataclass(frozen=True)
class StateMeta:
    """Identity of a state: `lineage` is set once; `serial` grows with every resource change."""

    lineage: str
    serial: int
    schema_version: int


@dataclass(frozen=True)
class Resource:
    """One observed resource. `created_at`/`updated_at` are set by the store on write."""

    address: str
    kind: str
    spec_hash: str
    spec: JSONObject = field(default_factory=dict)
    placement: JSONObject | None = None
    handles: JSONObject = field(default_factory=dict)
    status: str = "unknown"
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class LockInfo:
    """The state lock as a lease: whoever holds it must heartbeat before `expires_at`."""

    lock_id: str
    holder: str
    host: str
    pid: int
    operation: str
    acquired_at: float
    expires_at: float
    heartbeat_at: float

    def describe(self) -> str:
        return (
            f"{self.holder} on {self.host} (pid {self.pid}) for {self.operation!r}, "
            f"acquired {_iso(self.acquired_at)}, expires {_iso(self.expires_at)}, "
            f"lock id {self.lock_id}"
        )


@dataclass(frozen=True)
class Intent:
    """A journal row written before a provider call; `status` is pending, completed or failed."""

    key: str
    address: str
    action: str
    plan_id: str | None
    payload: JSONObject
    status: str
    result: JSONObject | None
    error: str | None
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class HistoryEntry:
    """One plan or apply run: who ran it, on which commit, and how it ended."""

    id: int
    operation: str
    who: str
    commit: str | None
    plan_id: str | None
    outcome: str
    message: str
    serial_before: int
    serial_after: int | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class PlacementKey:
    """Where something may run. In a block, None means "any"; in a query, "not known"."""

    infra: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    use_spot: bool | None = None
    accelerators: str | None = None


@dataclass(frozen=True)
class BlockedPlacement:
    """A placement that failed for capacity, kept off the candidate list until `expires_at`."""

    id: int
    placement: PlacementKey
    reason: str
    blocked_at: float
    expires_at: float


@dataclass(frozen=True)
class Event:
    """Something that happened to a resource (or to the state itself, address "state")."""

    id: int
    address: str
    at: float
    kind: str
    message: str


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
