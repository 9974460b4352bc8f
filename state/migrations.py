"""The store's one schema, as an ordered list of migrations, and the code that applies them.

A store records every version applied in `schema_version`; opening a store runs the missing
migrations in one transaction, so a crash mid-upgrade leaves the old version intact. Never edit
a released migration: append a new one (the tests build stores at every older version).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from state.db import Db
from state.errors import StateVersionError
from state.records import Clock


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    # DDL with {id}, {int} and {float} standing for the dialect's column types.
    statements: tuple[str, ...]
    after: Callable[[Db, Clock], None] | None = None


def _create_meta_row(db: Db, clock: Clock) -> None:
    db.execute(
        "INSERT INTO meta (id, lineage, serial, created_at) VALUES (1, ?, 0, ?)",
        (str(uuid.uuid4()), clock()),
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "meta, resources, locks, intent journal, run history",
        (
            "CREATE TABLE meta (id {int} PRIMARY KEY, lineage TEXT NOT NULL,"
            " serial {int} NOT NULL, created_at {float} NOT NULL)",
            "CREATE TABLE resources (address TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " spec_hash TEXT NOT NULL, spec TEXT NOT NULL, placement TEXT,"
            " handles TEXT NOT NULL, status TEXT NOT NULL,"
            " created_at {float} NOT NULL, updated_at {float} NOT NULL)",
            "CREATE TABLE locks (name TEXT PRIMARY KEY, lock_id TEXT NOT NULL,"
            " holder TEXT NOT NULL, host TEXT NOT NULL, pid {int} NOT NULL,"
            " operation TEXT NOT NULL, acquired_at {float} NOT NULL,"
            " expires_at {float} NOT NULL, heartbeat_at {float} NOT NULL)",
            "CREATE TABLE intents (key TEXT PRIMARY KEY, address TEXT NOT NULL,"
            " action TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,"
            " result TEXT, error TEXT, created_at {float} NOT NULL, finished_at {float})",
            "CREATE INDEX intents_by_status ON intents (status, created_at)",
            "CREATE TABLE runs (id {id}, operation TEXT NOT NULL, who TEXT NOT NULL,"
            " git_commit TEXT, plan_id TEXT, outcome TEXT NOT NULL, message TEXT NOT NULL,"
            " serial_before {int} NOT NULL, serial_after {int},"
            " started_at {float} NOT NULL, finished_at {float})",
        ),
        after=_create_meta_row,
    ),
    Migration(
        2,
        "blocked placements, events, plan id on intents",
        (
            "ALTER TABLE intents ADD COLUMN plan_id TEXT",
            "CREATE TABLE blocked_placements (id {id}, infra TEXT, region TEXT, zone TEXT,"
            " instance_type TEXT, use_spot {int}, accelerators TEXT, reason TEXT NOT NULL,"
            " blocked_at {float} NOT NULL, expires_at {float} NOT NULL)",
            "CREATE INDEX blocked_by_expiry ON blocked_placements (expires_at)",
            "CREATE TABLE events (id {id}, address TEXT NOT NULL, at {float} NOT NULL,"
            " kind TEXT NOT NULL, message TEXT NOT NULL)",
            "CREATE INDEX events_by_address ON events (address, id)",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def migrate(db: Db, clock: Clock, target: int = SCHEMA_VERSION) -> int:
    """Bring the store up to `target` in one transaction; returns the version it now has."""
    db.begin(write=True)
    try:
        db.lock_schema()
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version {int} PRIMARY KEY,"
            " applied_at {float} NOT NULL, description TEXT NOT NULL)".format(**db.types)
        )
        found = _current_version(db)
        if found > SCHEMA_VERSION:
            raise StateVersionError(
                f"the state store {db.description} has schema version {found}, but this "
                f"Skyform only knows versions up to {SCHEMA_VERSION}: it was written by a newer "
                "Skyform. Upgrade Skyform to use it; nothing was changed."
            )
        for migration in MIGRATIONS:
            if found < migration.version <= target:
                _apply(db, migration, clock)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return max(found, min(target, SCHEMA_VERSION))


def _current_version(db: Db) -> int:
    rows = db.execute("SELECT MAX(version) FROM schema_version")
    return int(rows[0][0] or 0)


def _apply(db: Db, migration: Migration, clock: Clock) -> None:
    for statement in migration.statements:
        db.execute(statement.format(**db.types))
    if migration.after is not None:
        migration.after(db, clock)
    db.execute(
        "INSERT INTO schema_version (version, applied_at, description) VALUES (?, ?, ?)",
        (migration.version, clock(), migration.description),
    )
