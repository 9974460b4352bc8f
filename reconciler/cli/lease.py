"""The state lock as a CLI apply or destroy holds it: a lease renewed in the background for as
long as the command runs, with the command's store fenced to it.

A lease rather than a lock without expiry (Terraform's): a holder whose host died frees it by
expiring, `LEASE_S` after its last renewal. Renewal keeps a long apply's lock alive however
long it takes; the fence makes the store refuse every write (each provider call's journal entry
first) once the lease is no longer ours, say after a frozen laptop woke past its expiry and
someone else had taken the lock meanwhile.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import threading
from collections.abc import Callable, Iterator

import click

from schema.errors import LockHeldError, SkyformError
from state import LockLostError, Store

LEASE_S = 300.0  # a dead holder on another host frees the lock after this


def who() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return f"{name}@{socket.gethostname()}"


@contextlib.contextmanager
def locked(
    store: Store, operation: str, reopen: Callable[[], Store], lease_s: float = LEASE_S
) -> Iterator[None]:
    """Hold the state lock around the block; `reopen` opens another store on the same state
    for the renewing thread (a store belongs to one thread)."""
    try:
        lock = store.acquire_lock(who(), operation, ttl=lease_s)
    except LockHeldError as exc:
        raise click.ClickException(
            f"{exc}\nAnother apply is running; wait for it, or if its holder is dead run "
            "`skyform state unlock LOCK_ID`."
        ) from exc
    store.fence(lock.lock_id)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(reopen, lock.lock_id, lease_s, stop), name="lock-lease", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=lease_s)
        store.fence(None)  # releasing a lock someone else took since is a no-op, not an error
        store.release_lock(lock.lock_id)


def _renew(
    reopen: Callable[[], Store], lock_id: str, lease_s: float, stop: threading.Event
) -> None:
    store: Store | None = None
    try:
        while not stop.wait(lease_s / 4):
            try:
                if store is None:
                    store = reopen()
                store.heartbeat(lock_id, lease_s)
            except LockLostError as exc:
                click.echo(f"Warning: {exc}", err=True)
                return  # the fence now refuses this command's writes
            except SkyformError as exc:  # the store is unreachable: try again next round
                click.echo(f"Warning: could not renew the state lock: {exc}", err=True)
                if store is not None:
                    store.close()
                store = None
    finally:
        if store is not None:
            store.close()
