"""The exported state document (like `terraform state pull/push`): build it, parse it, load it.

The document is versioned on its own (`format_version`), separately from the SQL schema, so a
document exported by one Skyform can be imported by a later one whatever the tables look like.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from state import journal
from state.db import Db
from state.errors import StateDocumentError
from state.records import BlockedPlacement, Event, HistoryEntry, Intent, Resource, StateMeta
from state.rows import (
    BLOCK_COLUMNS,
    EVENT_COLUMNS,
    RESOURCE_COLUMNS,
    RUN_COLUMNS,
    block_from_row,
    event_from_row,
    placement_params,
    resource_from_row,
    resource_params,
    run_from_row,
)

FORMAT = "skyform-state"
FORMAT_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True)
class StateDocument:
    lineage: str
    serial: int
    resources: list[Resource]
    intents: list[Intent]
    history: list[HistoryEntry]
    blocked: list[BlockedPlacement]
    events: list[Event]


def build(db: Db, meta: StateMeta, now: float) -> dict[str, Any]:
    """The whole state as JSON-ready data; run inside one read transaction."""
    resources = db.execute(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY address")
    runs = db.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id")
    blocks = db.execute(
        f"SELECT {BLOCK_COLUMNS} FROM blocked_placements WHERE expires_at > ? ORDER BY id",
        (now,),
    )
    events = db.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": meta.schema_version,
        "lineage": meta.lineage,
        "serial": meta.serial,
        "exported_at": now,
        "resources": [dataclasses.asdict(resource_from_row(r)) for r in resources],
        "intents": [dataclasses.asdict(i) for i in journal.all_intents(db)],
        "history": [dataclasses.asdict(run_from_row(r)) for r in runs],
        "blocked_placements": [dataclasses.asdict(block_from_row(r)) for r in blocks],
        "events": [dataclasses.asdict(event_from_row(r)) for r in events],
    }


def parse(document: Mapping[str, Any]) -> StateDocument:
    """Check the document completely before anything is written; errors name the bad field."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise StateDocumentError(f'not a Skyform state document (no "format": {FORMAT!r})')
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise StateDocumentError(
            f"state document format_version {version!r} is not supported (this Skyform reads "
            f"{FORMAT_VERSION}); export it again with a matching Skyform"
        )
    serial = _typed(document, "serial", int, "document")
    if serial < 0:
        raise StateDocumentError(f"document.serial must not be negative, got {serial}")
    return StateDocument(
        lineage=_typed(document, "lineage", str, "document"),
        serial=serial,
        resources=_records(document, "resources", Resource),
        intents=_records(document, "intents", Intent),
        history=_records(document, "history", HistoryEntry),
        blocked=_records(document, "blocked_placements", BlockedPlacement),
        events=_records(document, "events", Event),
    )


def load(db: Db, doc: StateDocument, current: StateMeta, force: bool) -> int:
    """Replace every table's rows with the document's; returns the new serial."""
    blank = current.serial == 0
    if doc.lineage != current.lineage and not blank and not force:
        raise StateDocumentError(
            f"the document belongs to lineage {doc.lineage}, this store to {current.lineage}: "
            "it is the state of something else. Use --force to replace it anyway."
        )
    if doc.serial < current.serial and not force:
        raise StateDocumentError(
            f"the document has serial {doc.serial}, older than the store's {current.serial}: "
            "importing it would lose later changes. Export again, or use --force."
        )
    for table in ("resources", "intents", "runs", "blocked_placements", "events"):
        db.execute(f"DELETE FROM {table}")
    for resource in doc.resources:
        db.execute(
            f"INSERT INTO resources ({RESOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            resource_params(resource, resource.created_at, resource.updated_at),
        )
    for intent in doc.intents:
        journal.insert(db, intent)
    _load_logs(db, doc)
    # The serial never goes backwards, even under --force: plans made before stay stale.
    serial = max(doc.serial, current.serial + 1)
    db.execute("UPDATE meta SET lineage = ?, serial = ? WHERE id = 1", (doc.lineage, serial))
    return serial


def _load_logs(db: Db, doc: StateDocument) -> None:
    # Ids are left to the database: explicit ids would not advance PostgreSQL's identity.
    run_columns = RUN_COLUMNS.removeprefix("id, ")
    for run in sorted(doc.history, key=lambda r: r.id):
        db.execute(
            f"INSERT INTO runs ({run_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(run)[1:],
        )
    block_columns = BLOCK_COLUMNS.removeprefix("id, ")
    for block in doc.blocked:
        db.execute(
            f"INSERT INTO blocked_placements ({block_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*placement_params(block.placement), block.reason, block.blocked_at, block.expires_at),
        )
    for event in sorted(doc.events, key=lambda e: e.id):
        db.execute(
            "INSERT INTO events (address, at, kind, message) VALUES (?, ?, ?, ?)",
            (event.address, event.at, event.kind, event.message),
        )


def _records(document: Mapping[str, Any], key: str, cls: type[T]) -> list[T]:
    items = _typed(document, key, list, "document")
    return [_make(cls, item, f"{key}[{index}]") for index, item in enumerate(items)]


def _make(cls: type[T], item: object, where: str) -> T:
    """Build dataclass `cls` from JSON, checking every field against its annotation."""
    if not isinstance(item, Mapping):
        raise StateDocumentError(f"{where} must be an object, got {item!r}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    unknown = sorted(set(item) - {f.name for f in fields})
    if unknown:
        raise StateDocumentError(f"{where}: unknown field(s) {', '.join(unknown)}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in item:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StateDocumentError(f"{where}: missing field {f.name!r}")
            continue
        value, hint = item[f.name], hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = _make(hint, value, f"{where}.{f.name}")
        elif not _matches(value, hint):
            raise StateDocumentError(f"{where}.{f.name} must be {_name(hint)}, got {value!r}")
        values[f.name] = value
    return cls(**values)


def _matches(value: object, hint: Any) -> bool:
    if get_origin(hint) in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint is not bool:
        return False
    if hint is float:
        return isinstance(value, int | float)
    origin = get_origin(hint) or hint
    return isinstance(origin, type) and isinstance(value, origin)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _typed(document: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    value = document.get(key)
    if not _matches(value, kind):
        raise StateDocumentError(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
    return value  # type: ignore[return-value]
