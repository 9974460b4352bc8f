"""Leader election through the state store's lock: a lease renewed by heartbeat.

The leader holds the store lock for as long as it runs, so CLI applies and other replicas wait.
It counts as leader only while its last renewal is younger than `renew_deadline` (< the lease):
a leader that cannot renew stops acting before anyone else may take the lease, as
controller-runtime's leader election does, and `on_lost` then ends the process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from reconciler.daemon import logs
from schema.errors import LockHeldError, SkyformError
from state import LockLostError, Store

OPERATION = "reconcile"


class Leadership:
    """Runs in its own thread with its own Store (a Store belongs to one thread)."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        lease_s: float = 30.0,
        on_change: Callable[[bool], None] = lambda leader: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.open_store = open_store
        self.lease_s = lease_s
        self.renew_every = lease_s / 5
        self.renew_deadline = lease_s * 0.6
        self.on_change = on_change
        self.on_lost = on_lost
        self.holder = f"skyform-reconcile@{socket.gethostname()}:{os.getpid()}"
        self.lock_id: str | None = None
        self.leader_holder: str | None = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_leader(self) -> bool:
        lock_id = self.lock_id
        return lock_id is not None and time.monotonic() - self._renewed < self.renew_deadline

    def confirm(self, store: Store) -> None:
        """Renew through the caller's store right before acting, and fence that store to the
        lease: from then on each of its writes (every provider call's journal entry first)
        checks in its own transaction that the lease is still ours. A leader frozen past its
        lease and woken after a standby took over cannot write, so cannot act. Raises
        LockLostError."""
        if self.lock_id is None or not self.is_leader():
            raise LockLostError("this replica is not the leader")
        store.heartbeat(self.lock_id, self.lease_s)
        store.fence(self.lock_id)
        self._renewed = time.monotonic()

    def check(self) -> None:
        """Called between the steps of an apply: a lease that lapsed meanwhile (the process
        was frozen, the store unreachable) ends the leadership, and with it the process."""
        if self.lock_id is not None and not self.is_leader():
            self._lose("the lease lapsed during an apply")

    def acquire_now(self, store: Store) -> bool:
        """One election round in the caller's thread (for `--once`)."""
        self._tick(store)
        return self.lock_id is not None

    def stop(self) -> None:
        """Step down: release the lease so a standby takes over at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.lease_s)
        elif self.lock_id is not None:
            with self.open_store() as store:
                self._release(store)

    def _run(self) -> None:
        store: Store | None = None
        try:
            while not self._stop.is_set():
                try:
                    if store is None:
                        store = self.open_store()
                    self._tick(store)
                except Exception as exc:
                    # The store is unreachable: keep trying; is_leader() lapses by itself.
                    logs.warning(f"leader election: {exc}")
                    if store is not None:
                        store.close()
                    store = None
                if self.lock_id is not None and not self.is_leader():
                    self._lose("the lease could not be renewed in time")
                self._stop.wait(self.renew_every)
        finally:
            if store is not None:
                self._release(store)
                store.close()

    def _tick(self, store: Store) -> None:
        if self.lock_id is not None:
            try:
                store.heartbeat(self.lock_id, self.lease_s)
                self._renewed = time.monotonic()
            except LockLostError as exc:
                self._lose(str(exc))
            return
        try:
            lock = store.acquire_lock(self.holder, OPERATION, ttl=self.lease_s)
        except LockHeldError as exc:
            held = exc.holder
            self.leader_holder = getattr(held, "holder", None)
            return
        self._renewed = time.monotonic()
        self.lock_id = lock.lock_id
        self.leader_holder = self.holder
        logs.info("became the leader", lock_id=lock.lock_id, lease_s=self.lease_s)
        self.on_change(True)

    def _lose(self, why: str) -> None:
        logs.error(f"lost leadership: {why}", lock_id=self.lock_id)
        self.lock_id = None
        self.on_change(False)
        self.on_lost()

    def _release(self, store: Store) -> None:
        if self.lock_id is None:
            return
        try:
            store.release_lock(self.lock_id)
        except (SkyformError, OSError) as exc:
            logs.warning(f"could not release the lease: {exc}")
        self.lock_id = None
        self.on_change(False)
