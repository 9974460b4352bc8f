"""The state store: the `Store` protocol with SQLite (default) and PostgreSQL implementations;
resources, serial and lineage, locks, intent journal, plan/apply history, blocked placements.
"""

from state.errors import LockLostError, StateDocumentError, StateError, StateVersionError
from state.factory import open_store
from state.records import (
    BlockedPlacement,
    Clock,
    Event,
    HistoryEntry,
    Intent,
    LockInfo,
    PlacementKey,
    Resource,
    StateMeta,
)
from state.store import Store

__all__ = [
    "BlockedPlacement",
    "Clock",
    "Event",
    "HistoryEntry",
    "Intent",
    "LockInfo",
    "LockLostError",
    "PlacementKey",
    "Resource",
    "StateDocumentError",
    "StateError",
    "StateMeta",
    "StateVersionError",
    "Store",
    "open_store",
]
