"""The `Store` protocol: everything the planner's caller and the applier may ask of a state store.

Callers build a store (see `state.factory.open_store`) and pass it in; nothing holds a global one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from state.records import (
    BlockedPlacement,
    Event,
    HistoryEntry,
    Intent,
    JSONObject,
    LockInfo,
    PlacementKey,
    Resource,
    StateMeta,
)


class Store(Protocol):
    """A state store. One instance belongs to one thread; processes share the backend."""

    @property
    def url(self) -> str:
        """Where the store lives, with any password hidden."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # -- identity: lineage is set once, serial grows with every resource change ------------
    def meta(self) -> StateMeta: ...

    # -- resources --------------------------------------------------------------------------
    def get_resource(self, address: str) -> Resource | None: ...

    def list_resources(self, kind: str | None = None) -> list[Resource]: ...

    def put_resource(self, resource: Resource) -> Resource:
        """Insert or replace one resource; the serial grows unless nothing changed."""
        ...

    def put_resources(self, resources: Sequence[Resource]) -> int:
        """Write many resources in one transaction (one serial step); returns the serial."""
        ...

    def delete_resource(self, address: str) -> bool: ...

    # -- the lock: a lease with holder and expiry ------------------------------------------
    def acquire_lock(self, holder: str, operation: str, ttl: float = 300.0) -> LockInfo:
        """Take the lock or raise `LockHeldError` naming the live holder."""
        ...

    def heartbeat(self, lock_id: str, ttl: float | None = None) -> LockInfo:
        """Extend the lease; raises `LockLostError` when it is no longer ours."""
        ...

    def release_lock(self, lock_id: str) -> bool: ...

    def fence(self, lock_id: str | None) -> None:
        """From now on every write of this store checks, in its own transaction, that the lock
        is still `lock_id`, else raises `LockLostError` and writes nothing (None: stop checking).
        Releasing that lock through this store ends the fence."""
        ...

    def current_lock(self) -> LockInfo | None: ...

    # -- intent journal ---------------------------------------------------------------------
    def record_intent(
        self,
        key: str,
        address: str,
        action: str,
        payload: JSONObject | None = None,
        plan_id: str | None = None,
    ) -> Intent:
        """Write the intent before a provider call; an existing key returns the existing row."""
        ...

    def complete_intent(self, key: str, result: JSONObject | None = None) -> Intent: ...

    def fail_intent(self, key: str, error: str) -> Intent: ...

    def get_intent(self, key: str) -> Intent | None: ...

    def incomplete_intents(self) -> list[Intent]: ...

    # -- plan/apply history -----------------------------------------------------------------
    def begin_run(
        self, operation: str, who: str, commit: str | None = None, plan_id: str | None = None
    ) -> HistoryEntry: ...

    def finish_run(self, run_id: int, outcome: str, message: str = "") -> HistoryEntry: ...

    def history(self, limit: int = 50) -> list[HistoryEntry]: ...

    # -- blocked placements -----------------------------------------------------------------
    def block_placement(
        self, placement: PlacementKey, reason: str, ttl: float
    ) -> BlockedPlacement: ...

    def find_block(self, placement: PlacementKey) -> BlockedPlacement | None:
        """The live block covering `placement` (a block's None fields match anything)."""
        ...

    def is_blocked(self, placement: PlacementKey) -> bool: ...

    def list_blocked(self) -> list[BlockedPlacement]: ...

    # -- events -----------------------------------------------------------------------------
    def add_event(self, address: str, kind: str, message: str) -> Event: ...

    def events(self, address: str | None = None, limit: int = 100) -> list[Event]: ...

    # -- the whole state as a versioned JSON document --------------------------------------
    def export_state(self) -> dict[str, Any]: ...

    def import_state(
        self, document: Mapping[str, Any], force: bool = False, lock_id: str | None = None
    ) -> StateMeta:
        """Replace the state with `document`; refuses an older serial or another lineage
        unless `force`, and refuses while someone else holds the lock."""
        ...
