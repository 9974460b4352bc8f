"""The intent journal: one row before every provider call, closed after, read after a crash.

A pending row after a crash means "this call may or may not have happened": the applier asks
the provider (which tags everything with the address and Skyform id) and adopts or retries it.
"""

from __future__ import annotations

import json

from state.db import Db, Row
from state.errors import StateError
from state.records import Intent, JSONObject
from state.rows import dumps

_COLUMNS = "key, address, action, plan_id, payload, status, result, error, created_at, finished_at"

PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"


def get(db: Db, key: str) -> Intent | None:
    rows = db.execute(f"SELECT {_COLUMNS} FROM intents WHERE key = ?", (key,))
    return _from_row(rows[0]) if rows else None


def record(
    db: Db,
    now: float,
    key: str,
    address: str,
    action: str,
    payload: JSONObject | None,
    plan_id: str | None,
) -> Intent:
    existing = get(db, key)
    if existing is not None:
        # A resumed apply re-derives the same key; handing back the old row (maybe already
        # completed) is what makes the provider call idempotent.
        if (existing.address, existing.action) != (address, action):
            raise StateError(
                f"intent key {key!r} already names {existing.action} {existing.address}, "
                f"not {action} {address}: idempotency keys must be unique per provider call"
            )
        return existing
    db.execute(
        f"INSERT INTO intents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL)",
        (key, address, action, plan_id, dumps(payload or {}), PENDING, now),
    )
    intent = get(db, key)
    assert intent is not None
    return intent


def finish(
    db: Db, now: float, key: str, status: str, result: JSONObject | None, error: str | None
) -> Intent:
    if get(db, key) is None:
        raise StateError(f"no intent with key {key!r} in the journal: record it before the call")
    db.execute(
        "UPDATE intents SET status = ?, result = ?, error = ?, finished_at = ? WHERE key = ?",
        (status, None if result is None else dumps(result), error, now, key),
    )
    intent = get(db, key)
    assert intent is not None
    return intent


def incomplete(db: Db) -> list[Intent]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM intents WHERE status = ? ORDER BY created_at, key", (PENDING,)
    )
    return [_from_row(row) for row in rows]


def all_intents(db: Db) -> list[Intent]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM intents ORDER BY created_at, key")
    return [_from_row(row) for row in rows]


def insert(db: Db, intent: Intent) -> None:
    db.execute(
        f"INSERT INTO intents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            intent.key,
            intent.address,
            intent.action,
            intent.plan_id,
            dumps(intent.payload),
            intent.status,
            None if intent.result is None else dumps(intent.result),
            intent.error,
            intent.created_at,
            intent.finished_at,
        ),
    )


def _from_row(row: Row) -> Intent:
    return Intent(
        key=row[0],
        address=row[1],
        action=row[2],
        plan_id=row[3],
        payload=json.loads(row[4]),
        status=row[5],
        result=None if row[6] is None else json.loads(row[6]),
        error=row[7],
        created_at=float(row[8]),
        finished_at=None if row[9] is None else float(row[9]),
    )
