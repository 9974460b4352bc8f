"""The daemon: leader election, one sync worker, the schedules that feed it, the HTTP server.

Every trigger (git poll, drift timer, webhook, becoming leader) only *requests* a sync; the one
worker thread runs them one at a time, merging requests that arrive meanwhile. That worker is
the in-process sync lock; the store lock the leader holds is the one across processes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from reconciler.context import state_url
from reconciler.daemon import logs
from reconciler.daemon.health import ControllerHealth
from reconciler.daemon.http import Hooks, Server
from reconciler.daemon.leader import Leadership
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.status import Status, SyncReport
from reconciler.daemon.sync import Settings, Syncer, controller_trees
from reconciler.source import GitSource, SourceError, redact
from schema.errors import LockHeldError, SkyformError
from schema.repo import CONFIG_FILE, DesiredState
from schema.repo_config import Reconcile, RepoConfig, load_repo_config
from state import Store, open_store

# Highest priority first: the trigger a merged batch of requests is reported under.
TRIGGERS = ("leader", "webhook", "drift", "poll")
FULL = frozenset({"leader", "drift"})  # these re-plan even when the head has not moved


class Daemon:
    def __init__(self, settings: Settings, on_lost: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.status = Status(redact(settings.repo), settings.branch)
        home = settings.home
        self.source = GitSource(
            settings.repo,
            settings.branch,
            home / "git",
            trusted_keys=settings.trusted_keys,
            in_use=lambda: controller_trees(home),
        )
        self.leadership = Leadership(
            self.open_store,
            lease_s=settings.lease_s,
            on_change=self._leader_changed,
            on_lost=on_lost or (lambda: None),
        )
        self.syncer = Syncer(
            settings, self.source, self.open_store, self.leadership, self.metrics, self.status
        )
        self.syncer.on_config = self._config_loaded
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._stopping = False
        self._synced = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sync-worker", daemon=True)
        self.scheduler = BackgroundScheduler(daemon=True)
        self._intervals: tuple[float, float, float] | None = None
        self.health = ControllerHealth(
            home, lambda address: self.metrics.controller_restarts.labels(address=address).inc()
        )
        self.http: Server | None = None
        # The store: --state, else $SKYFORM_STATE, else skyform.yaml's `state:` (read from the
        # branch head before anything else, since leading needs the store), else SQLite.
        self._state_url = state_url(settings.state_url, None)
        self._state_from_repo = self._state_url is None
        self._store_known = threading.Event()
        if not self._state_from_repo:
            self._store_known.set()

    def open_store(self) -> Store:
        # Leader election waits here until the worker has read skyform.yaml; no replica ever
        # falls back to the default store meanwhile (that would be a second, lockless leader).
        if not self._store_known.wait(timeout=self.settings.lease_s):
            raise SourceError("waiting to read `state:` from the repo's skyform.yaml")
        return open_store(self._state_url, self.settings.home)

    def _read_state_url(self) -> None:
        """`state:` of skyform.yaml at the branch head (a signed one, when keys are given)."""
        head = self.source.fetch()
        self.source.verify(head)
        path = self.source.checkout(head) / CONFIG_FILE
        config = load_repo_config(path.read_bytes(), CONFIG_FILE) if path.is_file() else None
        self._state_url = (config or RepoConfig()).state
        self._store_known.set()
        where = redact(self._state_url) if self._state_url else "the default SQLite store"
        logs.info(f"state store from skyform.yaml: {where}", commit=head)

    def _resolve_store(self) -> None:
        """On the worker (GitSource is not thread-safe): retry with backoff until it is read."""
        while not self._store_known.is_set():
            try:
                self._read_state_url()
                self.source.backoff.succeeded()
            except Exception as exc:  # unreachable remote, invalid or untrusted head: retry
                delay = self.source.backoff.failed(time.monotonic())
                self.status.update(source_error=f"cannot read `state:` from skyform.yaml: {exc}")
                logs.warning(
                    f"cannot read `state:` from skyform.yaml ({exc}); retry in {delay:.0f}s"
                )
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(timeout=delay)
                    if self._stopping:
                        return

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.listen is not None:
            self.http = Server(*self.settings.listen, self._hooks())  # binds: fails early
        self._schedule(Reconcile())
        self.scheduler.start()
        self._worker.start()
        self.leadership.start()
        if self.http is not None:
            self.http.start()
        logs.info(
            "reconciler started",
            repo=redact(self.settings.repo),
            branch=self.settings.branch,
            listen=self.http.address if self.http else None,
            pid=os.getpid(),
        )

    def stop(self) -> None:
        """Finish the sync in progress, then step down so a standby takes over at once."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join()
        self.leadership.stop()
        if self.http is not None:
            self.http.stop()
        logs.info("reconciler stopped")

    def run_once(self) -> SyncReport:
        """`--once`: take the lock (or fail naming its holder), sync fully, release."""
        if not self._store_known.is_set():
            try:
                self._read_state_url()
            except SkyformError:
                raise
            except Exception as exc:  # git errors: say what could not be read
                raise SourceError(f"cannot read `state:` from skyform.yaml: {exc}") from exc
        with self.open_store() as store:
            if not self.leadership.acquire_now(store):
                raise LockHeldError(f"the state is locked by {self.leadership.leader_holder}")
        self.leadership.start()
        try:
            return self.syncer.sync("once", full=True)
        finally:
            self.syncer.close()
            self.leadership.stop()

    # -- requests and the worker ----------------------------------------------------------------
    def request(self, trigger: str) -> None:
        with self._cond:
            self._pending.add(trigger)
            self._cond.notify_all()

    def _work(self) -> None:
        try:
            self.syncer.warm()
        except Exception as exc:  # a plan will report it; warming is only an optimisation
            logs.warning(f"could not preload the catalog: {exc}")
        self._resolve_store()
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                batch, self._pending = self._pending, set()
                self._busy = True
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self.syncer.close()

    def _run_batch(self, batch: set[str]) -> None:
        if not self.leadership.is_leader():
            return  # a standby only watches; the leader will sync
        trigger = next(t for t in TRIGGERS if t in batch)
        try:
            self.syncer.sync(trigger, full=bool(batch & FULL))
        except Exception as exc:  # the worker must outlive any one sync's bug
            logs.logger().exception(f"sync crashed: {exc}")
            self.syncer.close()
        self._synced.set()

    def queue(self) -> dict[str, Any]:
        """What the worker is doing: the requests waiting and whether a sync runs now."""
        with self._cond:
            return {"busy": self._busy, "pending": sorted(self._pending)}

    def snapshot(self) -> dict[str, Any]:
        return {**self.status.snapshot(), "leader": self.leadership.leader_holder, **self.queue()}

    def _leader_changed(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        self.status.update(role="leader" if leader else "standby")
        if leader:
            self.metrics.leader_changes.inc()
            self.request("leader")
        else:
            self._synced.clear()

    # -- schedules ------------------------------------------------------------------------------
    def _config_loaded(self, desired: DesiredState) -> None:
        config = desired.config.reconcile
        if config.branch != self.settings.branch:
            logs.warning(
                f"skyform.yaml says reconcile.branch={config.branch!r} but this daemon follows "
                f"{self.settings.branch!r} (--branch decides)"
            )
        self._schedule(config)
        if self._state_from_repo and desired.config.state != self._state_url:
            logs.warning(
                "skyform.yaml's `state:` changed; this daemon keeps the store it started with "
                "until it restarts (move the state first: `skyform state export` then `import`)"
            )

    def _schedule(self, config: Reconcile) -> None:
        wanted = (config.poll_interval, config.drift_interval, config.health_interval)
        if wanted == self._intervals:
            return
        self._intervals = wanted
        poll, drift, health = wanted
        # Jitter spreads many daemons' fetches of one remote (Argo CD adds up to 50%).
        jitter = min(poll * 0.2, 30.0)
        for name, seconds, spread in (("poll", poll, jitter), ("drift", drift, 0.0)):
            self.scheduler.add_job(
                self.request,
                IntervalTrigger(seconds=seconds, jitter=spread or None),
                args=[name],
                id=name,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
        # Off the sync worker: a long apply or a slow provider does not delay it.
        self.scheduler.add_job(
            self._health,
            IntervalTrigger(seconds=health),
            id="health",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
        )
        logs.info("schedules set", poll_interval=poll, drift_interval=drift, health_interval=health)

    def _health(self) -> None:
        if not self.leadership.is_leader():
            return  # a standby's controllers are the leader's to mind
        try:
            self.health.tick()
        except Exception as exc:  # the schedule must outlive any one tick's bug
            logs.logger().exception(f"health tick crashed: {exc}")

    # -- HTTP -----------------------------------------------------------------------------------
    def _hooks(self) -> Hooks:
        return Hooks(
            snapshot=self.snapshot,
            metrics=self.metrics,
            branch=self.settings.branch,
            secret=lambda: self.settings.webhook_secret,
            request_sync=self.request,
            healthy=self._worker.is_alive,
            ready=lambda: self.leadership.is_leader() and self._synced.is_set(),
            leader=self.leadership.is_leader,
        )
