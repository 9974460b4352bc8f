"""`SqlStore`: the one `Store` implementation, over either dialect adapter (SQLite, PostgreSQL).

Every write is one transaction that first excludes all other writers, so a resource change and
its serial step commit together or not at all, and lock decisions see the latest committed row.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from schema.errors import LockHeldError
from state import document as state_document
from state import journal, locks
from state.db import Db
from state.errors import StateError
from state.migrations import SCHEMA_VERSION, migrate
from state.records import (
    BlockedPlacement,
    Clock,
    Event,
    HistoryEntry,
    Intent,
    JSONObject,
    LockInfo,
    PlacementKey,
    Resource,
    StateMeta,
    system_clock,
)
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

_UPSERT_RESOURCE = (
    f"INSERT INTO resources ({RESOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (address) DO UPDATE SET kind = excluded.kind,"
    " spec_hash = excluded.spec_hash, spec = excluded.spec, placement = excluded.placement,"
    " handles = excluded.handles, status = excluded.status, updated_at = excluded.updated_at"
)


class SqlStore:
    """A `Store` over one connection. Opening it migrates the schema (see `state.migrations`)."""

    def __init__(
        self,
        db: Db,
        clock: Clock = system_clock,
        *,
        host: str | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self._db = db
        self._clock = clock
        # Which host a lock holder is on decides whether its pid can be checked at all.
        self._host = host or socket.gethostname()
        self._fence: str | None = None
        try:
            self._version = migrate(db, clock, schema_version)
        except BaseException:
            db.close()
            raise

    @property
    def url(self) -> str:
        return self._db.description

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Db]:
        db = self._db
        db.begin(write=True)
        try:
            if db.dialect == "postgresql":
                # The meta row is the single point every writer queues on; SQLite's
                # BEGIN IMMEDIATE already did the same.
                db.execute("SELECT serial FROM meta WHERE id = 1 FOR UPDATE")
            if self._fence is not None:
                locks.check_fence(db, self._fence)
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise

    @contextmanager
    def _read(self) -> Iterator[Db]:
        self._db.begin(write=False)
        try:
            yield self._db
            self._db.commit()
        except BaseException:
            self._db.rollback()
            raise

    def _bump(self, db: Db) -> int:
        return int(
            db.execute("UPDATE meta SET serial = serial + 1 WHERE id = 1 RETURNING serial")[0][0]
        )

    def _meta(self, db: Db) -> StateMeta:
        rows = db.execute("SELECT lineage, serial FROM meta WHERE id = 1")
        if not rows:
            raise StateError(f"state store {self.url} has no meta row: it is damaged")
        return StateMeta(lineage=rows[0][0], serial=int(rows[0][1]), schema_version=self._version)

    def meta(self) -> StateMeta:
        return self._meta(self._db)

    # -- resources ---------------------------------------------------------------------------
    def get_resource(self, address: str) -> Resource | None:
        rows = self._db.execute(
            f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE address = ?", (address,)
        )
        return resource_from_row(rows[0]) if rows else None

    def list_resources(self, kind: str | None = None) -> list[Resource]:
        if kind is None:
            rows = self._db.execute(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY address")
        else:
            rows = self._db.execute(
                f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE kind = ? ORDER BY address",
                (kind,),
            )
        return [resource_from_row(row) for row in rows]

    def put_resource(self, resource: Resource) -> Resource:
        self.put_resources([resource])
        stored = self.get_resource(resource.address)
        assert stored is not None
        return stored

    def put_resources(self, resources: Sequence[Resource]) -> int:
        with self._write() as db:
            now = self._clock()
            changed = False
            for resource in resources:
                if not resource.address or not resource.kind:
                    raise StateError(f"a resource needs an address and a kind: {resource!r}")
                rows = db.execute(
                    f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE address = ?",
                    (resource.address,),
                )
                old = rows[0] if rows else None
                new = resource_params(resource, now, now)
                # Rewriting identical content (a refresh that found nothing new) is not a
                # change: bumping the serial would make every open plan stale for nothing.
                if old is not None and tuple(old[:7]) == new[:7]:
                    continue
                db.execute(_UPSERT_RESOURCE, new)
                changed = True
            return self._bump(db) if changed else self._meta(db).serial

    def delete_resource(self, address: str) -> bool:
        with self._write() as db:
            gone = db.execute(
                "DELETE FROM resources WHERE address = ? RETURNING address", (address,)
            )
            if gone:
                self._bump(db)
            return bool(gone)

    # -- the lock ----------------------------------------------------------------------------
    def acquire_lock(self, holder: str, operation: str, ttl: float = 300.0) -> LockInfo:
        with self._write() as db:
            now = self._clock()
            lock, replaced = locks.acquire(db, now, holder, operation, ttl, self._host)
            if replaced is not None:
                self._event(
                    db, "state", "lock-expired", f"took over dead lock: {replaced.describe()}"
                )
            return lock

    def heartbeat(self, lock_id: str, ttl: float | None = None) -> LockInfo:
        with self._write() as db:
            return locks.heartbeat(db, self._clock(), lock_id, ttl)

    def release_lock(self, lock_id: str) -> bool:
        with self._write() as db:
            released = locks.release(db, lock_id) is not None
        if self._fence == lock_id:
            self._fence = None
        return released

    def fence(self, lock_id: str | None) -> None:
        self._fence = lock_id

    def current_lock(self) -> LockInfo | None:
        return locks.current(self._db)

    # -- intent journal ----------------------------------------------------------------------
    def record_intent(
        self,
        key: str,
        address: str,
        action: str,
        payload: JSONObject | None = None,
        plan_id: str | None = None,
    ) -> Intent:
        with self._write() as db:
            return journal.record(db, self._clock(), key, address, action, payload, plan_id)

    def complete_intent(self, key: str, result: JSONObject | None = None) -> Intent:
        with self._write() as db:
            return journal.finish(db, self._clock(), key, journal.COMPLETED, result, None)

    def fail_intent(self, key: str, error: str) -> Intent:
        with self._write() as db:
            return journal.finish(db, self._clock(), key, journal.FAILED, None, error)

    def get_intent(self, key: str) -> Intent | None:
        return journal.get(self._db, key)

    def incomplete_intents(self) -> list[Intent]:
        return journal.incomplete(self._db)

    # -- history -----------------------------------------------------------------------------
    def begin_run(
        self, operation: str, who: str, commit: str | None = None, plan_id: str | None = None
    ) -> HistoryEntry:
        with self._write() as db:
            serial = self._meta(db).serial
            rows = db.execute(
                "INSERT INTO runs (operation, who, git_commit, plan_id, outcome, message,"
                " serial_before, started_at) VALUES (?, ?, ?, ?, 'running', '', ?, ?)"
                f" RETURNING {RUN_COLUMNS}",
                (operation, who, commit, plan_id, serial, self._clock()),
            )
            return run_from_row(rows[0])

    def finish_run(self, run_id: int, outcome: str, message: str = "") -> HistoryEntry:
        with self._write() as db:
            rows = db.execute(
                "UPDATE runs SET outcome = ?, message = ?, serial_after = ?, finished_at = ?"
                f" WHERE id = ? RETURNING {RUN_COLUMNS}",
                (outcome, message, self._meta(db).serial, self._clock(), run_id),
            )
            if not rows:
                raise StateError(f"no run {run_id} in the history")
            return run_from_row(rows[0])

    def history(self, limit: int = 50) -> list[HistoryEntry]:
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [run_from_row(row) for row in rows]

    # -- blocked placements ------------------------------------------------------------------
    def block_placement(self, placement: PlacementKey, reason: str, ttl: float) -> BlockedPlacement:
        with self._write() as db:
            now = self._clock()
            # Expired blocks are dead weight for every is_blocked query; drop them here.
            db.execute("DELETE FROM blocked_placements WHERE expires_at <= ?", (now,))
            rows = db.execute(
                "INSERT INTO blocked_placements (infra, region, zone, instance_type, use_spot,"
                " accelerators, reason, blocked_at, expires_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {BLOCK_COLUMNS}",
                (*placement_params(placement), reason, now, now + ttl),
            )
            return block_from_row(rows[0])

    def find_block(self, placement: PlacementKey) -> BlockedPlacement | None:
        # A NULL column is a wildcard; a NULL query value (not known) matches only wildcards,
        # because `column = NULL` is never true.
        rows = self._db.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocked_placements WHERE expires_at > ?"
            " AND (infra IS NULL OR infra = ?) AND (region IS NULL OR region = ?)"
            " AND (zone IS NULL OR zone = ?) AND (instance_type IS NULL OR instance_type = ?)"
            " AND (use_spot IS NULL OR use_spot = ?)"
            " AND (accelerators IS NULL OR accelerators = ?)"
            " ORDER BY expires_at DESC, id LIMIT 1",
            (self._clock(), *placement_params(placement)),
        )
        return block_from_row(rows[0]) if rows else None

    def is_blocked(self, placement: PlacementKey) -> bool:
        return self.find_block(placement) is not None

    def list_blocked(self) -> list[BlockedPlacement]:
        rows = self._db.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocked_placements WHERE expires_at > ? ORDER BY id",
            (self._clock(),),
        )
        return [block_from_row(row) for row in rows]

    # -- events ------------------------------------------------------------------------------
    def add_event(self, address: str, kind: str, message: str) -> Event:
        with self._write() as db:
            return self._event(db, address, kind, message)

    def _event(self, db: Db, address: str, kind: str, message: str) -> Event:
        rows = db.execute(
            f"INSERT INTO events (address, at, kind, message) VALUES (?, ?, ?, ?)"
            f" RETURNING {EVENT_COLUMNS}",
            (address, self._clock(), kind, message),
        )
        return event_from_row(rows[0])

    def events(self, address: str | None = None, limit: int = 100) -> list[Event]:
        if address is None:
            rows = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE address = ? ORDER BY id DESC LIMIT ?",
                (address, limit),
            )
        return [event_from_row(row) for row in rows]

    # -- export / import ---------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        with self._read() as db:
            return state_document.build(db, self._meta(db), self._clock())

    def import_state(
        self, document: Mapping[str, Any], force: bool = False, lock_id: str | None = None
    ) -> StateMeta:
        parsed = state_document.parse(document)
        with self._write() as db:
            now = self._clock()
            held = locks.current(db)
            if (
                held is not None
                and held.lock_id != lock_id
                and not locks.is_dead(held, now, self._host)
            ):
                raise LockHeldError(locks.held_message(held), holder=held)
            serial = state_document.load(db, parsed, self._meta(db), force)
            self._event(db, "state", "import", f"imported lineage {parsed.lineage} serial {serial}")
            return self._meta(db)
