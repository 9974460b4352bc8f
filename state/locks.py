"""The state lock as a lease: take, renew, release, and when a holder counts as dead.

Every function here runs inside the caller's write transaction, which already excludes every
other writer (BEGIN IMMEDIATE on SQLite, the meta row lock on PostgreSQL): that, not anything
in this module, is why exactly one of many racing processes wins.
"""

from __future__ import annotations

import os
import uuid

from schema.errors import LockHeldError
from state.db import Db, Row
from state.errors import LockLostError
from state.records import LockInfo

LOCK_NAME = "state"
_COLUMNS = "lock_id, holder, host, pid, operation, acquired_at, expires_at, heartbeat_at"


def current(db: Db) -> LockInfo | None:
    rows = db.execute(f"SELECT {_COLUMNS} FROM locks WHERE name = ?", (LOCK_NAME,))
    return _from_row(rows[0]) if rows else None


def is_dead(lock: LockInfo, now: float, this_host: str) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    if now >= lock.expires_at:
        return True
    # Only on the same host does a pid mean anything; elsewhere the lease expiry decides.
    return lock.host == this_host and not _pid_alive(lock.pid)


def acquire(
    db: Db, now: float, holder: str, operation: str, ttl: float, host: str
) -> tuple[LockInfo, LockInfo | None]:
    """Take the lock; returns it and the dead lock it replaced, if any."""
    if ttl <= 0:
        raise ValueError(f"lock ttl must be positive, got {ttl}")
    replaced = current(db)
    if replaced is not None:
        if not is_dead(replaced, now, host):
            raise LockHeldError(held_message(replaced), holder=replaced)
        db.execute("DELETE FROM locks WHERE name = ?", (LOCK_NAME,))
    lock = LockInfo(
        lock_id=str(uuid.uuid4()),
        holder=holder,
        host=host,
        pid=os.getpid(),
        operation=operation,
        acquired_at=now,
        expires_at=now + ttl,
        heartbeat_at=now,
    )
    db.execute(
        f"INSERT INTO locks (name, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            LOCK_NAME,
            lock.lock_id,
            lock.holder,
            lock.host,
            lock.pid,
            lock.operation,
            lock.acquired_at,
            lock.expires_at,
            lock.heartbeat_at,
        ),
    )
    return lock, replaced


def heartbeat(db: Db, now: float, lock_id: str, ttl: float | None) -> LockInfo:
    lock = current(db)
    if lock is None or lock.lock_id != lock_id:
        taken = f"; it is now held by {lock.describe()}" if lock else ""
        raise LockLostError(
            f"lock {lock_id} is no longer held (it expired or was unlocked){taken}. "
            "Stop writing and plan again."
        )
    # An expired lease nobody has taken yet is still ours: taking it would have removed it.
    lease = ttl if ttl is not None else lock.expires_at - lock.heartbeat_at
    db.execute(
        "UPDATE locks SET expires_at = ?, heartbeat_at = ? WHERE name = ? AND lock_id = ?",
        (now + lease, now, LOCK_NAME, lock_id),
    )
    return LockInfo(
        lock_id=lock.lock_id,
        holder=lock.holder,
        host=lock.host,
        pid=lock.pid,
        operation=lock.operation,
        acquired_at=lock.acquired_at,
        expires_at=now + lease,
        heartbeat_at=now,
    )


def check_fence(db: Db, lock_id: str) -> None:
    """Refuse a write made under a lease that is no longer the caller's (a fencing token: a
    leader frozen past its lease, then woken, must not write over its successor's work)."""
    lock = current(db)
    if lock is None or lock.lock_id != lock_id:
        taken = f"; it is now held by {lock.describe()}" if lock else ""
        raise LockLostError(
            f"this write was made under lock {lock_id}, which is no longer held (it expired "
            f"or was unlocked){taken}. Nothing was written; plan again."
        )


def release(db: Db, lock_id: str) -> LockInfo | None:
    lock = current(db)
    if lock is None or lock.lock_id != lock_id:
        return None
    db.execute("DELETE FROM locks WHERE name = ? AND lock_id = ?", (LOCK_NAME, lock_id))
    return lock


def held_message(lock: LockInfo) -> str:
    return (
        f"the state is locked by {lock.describe()}. Wait for that operation to finish; "
        f"if its process is gone the lock expires by itself, or break it now with "
        f"`skyform state unlock {lock.lock_id}`."
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # EPERM: the process exists but belongs to someone else.
        return True
    return True


def _from_row(row: Row) -> LockInfo:
    return LockInfo(
        lock_id=row[0],
        holder=row[1],
        host=row[2],
        pid=int(row[3]),
        operation=row[4],
        acquired_at=float(row[5]),
        expires_at=float(row[6]),
        heartbeat_at=float(row[7]),
    )
