"""The service controller's logic, one `tick()` at a time: replicas launched, probed, replaced,
autoscaled and rolled to a new version, behind one load balancer (see `service.py` for the
process around it and the status.json it writes)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from applier.controllers.common import (
    cancel_requested,
    providers_for,
    read_spec,
    read_status,
    write_status,
)
from applier.controllers.service_replicas import (
    LaunchOrder,
    Replica,
    launch_replica,
    lost_status,
    parse_replica_id,
    service_task,
)
from applier.provider import (
    Handle,
    ObservedResource,
    Provider,
    ResourceKind,
    ResourceStatus,
    Selector,
)
from applier.serve.autoscaler import autoscaler_for
from applier.serve.lb import LoadBalancer
from applier.serve.probe import ProbeResult, ProbeState, advance, probe_due, probe_once
from applier.serve.status import ReplicaStatus
from schema.errors import SkyformError

log = logging.getLogger(__name__)

MAX_FAILED_KEPT = 10  # failed replicas kept in the status (and shown to the autoscaler)
LAUNCH_BACKOFF_SECONDS = (1.0, 60.0)  # first and longest wait after a launch found no room
LB_BIND_SECONDS = 10.0  # how long to wait for the LB port a previous controller still holds


class ServiceController:
    """One service's replicas and load balancer. Single-threaded: `tick()` is called in a loop
    (`run`); only the probes (on a small pool) and the load balancer (its own thread) run
    beside it, and both hand results over through thread-safe calls."""

    def __init__(
        self,
        directory: Path,
        *,
        providers: Mapping[str, Provider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        spec = read_spec(directory)
        if spec is None:
            raise ValueError(f"{directory} holds no spec.json")
        self.directory = directory
        self.spec = spec
        self.version = spec.version
        self._task, self._service = service_task(spec)
        self._clock = clock
        self._previous = read_status(directory)
        home = directory.parent.parent  # <home>/controllers/<name>
        saved = [h.placement for h in self._saved_handles()]
        self._providers = dict(
            providers
            if providers is not None
            else providers_for([*spec.placements(), *saved], home, spec.provider_settings)
        )
        self._autoscaler = autoscaler_for(self._service.policy, version=spec.version)
        self.replicas: dict[int, Replica] = {}
        self.attempts: list[dict[str, Any]] = list(self._previous.get("attempts") or [])
        self._next_id = int(self._previous.get("next_replica_id") or 1)
        self._lb: LoadBalancer | None = None
        self._lb_urls: list[str] = []
        self._probes: dict[int, Future[ProbeResult]] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._target = self._service.policy.min_replicas
        self._halted: str | None = None
        self._message: str | None = None
        self._ever_ready = bool(self._previous.get("ever_ready"))
        self._launch_after = 0.0
        self._backoff = LAUNCH_BACKOFF_SECONDS[0]

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        return None if self._lb is None else self._lb.url

    def start(self) -> None:
        """Bind the load balancer (the same port as before) and adopt running replicas."""
        self._lb = self._bind_lb()
        self._adopt()
        self.publish("STARTING")

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set or the cancel file appears, then tear everything down."""
        self.start()
        try:
            while not stop.is_set() and not cancel_requested(self.directory):
                try:
                    self.tick()
                except Exception as exc:  # keep serving: a replica bug must not drop the LB
                    log.exception("tick failed")
                    self._message = f"controller error: {type(exc).__name__}: {exc}"
                stop.wait(self.spec.poll_seconds)
        finally:
            self.shutdown()

    def tick(self) -> None:
        now = self._clock()
        self._reload_spec(now)
        observed = self._observe()
        self._check_processes(observed)
        self._terminate_orphans(observed)
        self._collect_probes()
        self._start_probes()
        self._retire_failed()
        self._autoscale(now)
        self.publish()

    def shutdown(self) -> None:
        """Stop the load balancer, terminate every replica (and anything of ours the provider
        still lists), and report SHUTDOWN."""
        self.publish("SHUTTING_DOWN")
        if self._lb is not None:
            self._lb.stop()
        for replica in list(self.replicas.values()):
            if replica.handle is not None:
                replica.status = ReplicaStatus.SHUTTING_DOWN
                self._terminate(replica)
        self._terminate_orphans(self._observe())
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.replicas = {k: r for k, r in self.replicas.items() if r.handle is not None}
        self.publish("SHUTDOWN" if not self.replicas else "FAILED")

    # ---- start-up ---------------------------------------------------------------------------

    def _saved_handles(self) -> list[Handle]:
        out = []
        for rec in self._previous.get("replicas") or []:
            if isinstance(rec, dict) and rec.get("handle"):
                out.append(Handle.from_dict(rec["handle"]))
        return out

    def _bind_lb(self) -> LoadBalancer:
        port = self.spec.lb_port
        if port is None and self._previous.get("endpoint"):
            port = urlsplit(str(self._previous["endpoint"])).port  # re-bind what we had
        deadline = time.monotonic() + LB_BIND_SECONDS
        while True:
            policy = self._service.load_balancing_policy
            lb = LoadBalancer(port or 0, policy, clock=self._clock)
            try:
                return lb.start()
            except OSError:
                # A controller that is shutting down may still hold the port for a moment.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _adopt(self) -> None:
        """Take over the replicas a previous controller of this service left running."""
        now = self._clock()
        for provider, obs in self._owned():
            ids = parse_replica_id(self.spec.skyform_id, obs.handle.skyform_id)
            if ids is None:
                continue
            version, replica_id = ids
            self._next_id = max(self._next_id, replica_id + 1)
            if obs.status == ResourceStatus.LAUNCHING or lost_status(obs) is not None:
                provider.terminate(obs.handle)  # half-launched or dead: start afresh
                continue
            self.replicas[replica_id] = Replica(
                replica_id, version, obs.handle, ProbeState.starting(now)
            )
            log.info("adopted replica %s (version %s)", replica_id, version)

    # ---- each tick --------------------------------------------------------------------------

    def _reload_spec(self, now: float) -> None:
        """A newer version in spec.json (the applier rewrote it) starts a rolling update."""
        spec = read_spec(self.directory)
        if spec is None or spec.version <= self.version:
            return
        try:
            task, service = service_task(spec)
        except (SkyformError, ValueError) as exc:
            self._message = f"version {spec.version} does not load, still on {self.version}: {exc}"
            return
        log.info("rolling update: version %s -> %s", self.version, spec.version)
        self._autoscaler.update_version(spec.version, service.policy, now)
        self.spec, self.version, self._task, self._service = spec, spec.version, task, service
        self._launch_after, self._backoff = 0.0, LAUNCH_BACKOFF_SECONDS[0]

    def _owned(self) -> list[tuple[Provider, ObservedResource]]:
        """Every replica resource of this service, one listing call per provider."""
        selector = Selector(address=self.spec.address, kind=ResourceKind.SERVICE_REPLICA)
        out = []
        for provider in self._providers.values():
            for obs in provider.observe(selector):
                if parse_replica_id(self.spec.skyform_id, obs.handle.skyform_id) is not None:
                    out.append((provider, obs))
        return out

    def _observe(self) -> dict[str, ObservedResource]:
        return {obs.handle.skyform_id: obs for _, obs in self._owned()}

    def _check_processes(self, observed: Mapping[str, ObservedResource]) -> None:
        for replica in self.replicas.values():
            if replica.handle is None or not replica.live:
                continue
            lost = lost_status(observed.get(replica.handle.skyform_id))
            if lost is not None:
                replica.status, replica.message = lost
                log.warning("replica %s: %s", replica.replica_id, replica.message)

    def _terminate_orphans(self, observed: Mapping[str, ObservedResource]) -> None:
        """Ours by id but tracked by no replica: a launch that failed half-way."""
        tracked = {r.handle.skyform_id for r in self.replicas.values() if r.handle is not None}
        for skyform_id, obs in observed.items():
            provider = self._providers.get(obs.handle.placement.cloud)
            if skyform_id not in tracked and provider is not None:
                self._call(provider.terminate, obs.handle)

    def _collect_probes(self) -> None:
        probe = self._service.readiness_probe
        for replica_id, future in list(self._probes.items()):
            if not future.done():
                continue
            del self._probes[replica_id]
            replica = self.replicas.get(replica_id)
            if replica is None or not replica.live:
                continue
            result = future.result()
            replica.probe = advance(replica.probe, result.ok, self._clock(), probe)
            replica.message = result.error or (
                None if result.ok else f"probe answered {result.status_code}"
            )
            self._ever_ready = self._ever_ready or replica.probe.ready

    def _start_probes(self) -> None:
        probe = self._service.readiness_probe
        now = self._clock()
        for replica in self.replicas.values():
            url = replica.url
            if url is None or not replica.live or replica.replica_id in self._probes:
                continue
            state = replica.probe
            # A replica not yet ready is probed every tick, not every probe interval
            # (10 s by default), so it starts serving as soon as it answers.
            starting = state.status is ReplicaStatus.STARTING and state.last_probe_at is not None
            due = (
                now - (state.last_probe_at or 0.0) >= self.spec.poll_seconds
                if starting
                else probe_due(state, probe, now)
            )
            if due:
                self._probes[replica.replica_id] = self._pool.submit(probe_once, url, probe)

    def _retire_failed(self) -> None:
        """Terminate replicas that died or that the prober gave up on; keep their records so
        the status shows them and the autoscaler can see a version that keeps failing."""
        failed = [r for r in self.replicas.values() if not r.live and r.handle is not None]
        if not failed:
            return
        self._sync_lb()  # out of the balancer before their processes go
        for replica in failed:
            self._terminate(replica)
        gone = sorted(
            (r for r in self.replicas.values() if r.handle is None),
            key=lambda r: r.replica_id,
        )
        for replica in gone[:-MAX_FAILED_KEPT]:
            del self.replicas[replica.replica_id]

    def _autoscale(self, now: float) -> None:
        assert self._lb is not None
        self._autoscaler.collect(self._lb.drain_request_timestamps(), now)
        views = [r.view() for r in self.replicas.values()]
        decision = self._autoscaler.evaluate(views, now)
        self._target, self._halted = decision.target, decision.halted
        retiring = [self.replicas[i] for i in decision.scale_down if i in self.replicas]
        for replica in retiring:
            replica.status = ReplicaStatus.SHUTTING_DOWN
        self._sync_lb()  # drop them from the balancer first: create-before-destroy
        for replica in retiring:
            if self._terminate(replica):
                del self.replicas[replica.replica_id]
        if decision.halted or not decision.scale_up or now < self._launch_after:
            return
        for scale_up in decision.scale_up:
            if not self._launch_one(scale_up.use_spot, now):
                break
        self._sync_lb()

    def _launch_one(self, use_spot: bool | None, now: float) -> bool:
        replica_id = self._next_id
        self._next_id += 1  # never reused: a failed launch may have left its id behind
        order = LaunchOrder(
            address=self.spec.address,
            service_id=self.spec.skyform_id,
            version=self.version,
            replica_id=replica_id,
            task=self._task,
            base_dir=Path(self.spec.base_dir),
            use_spot=use_spot,
        )
        handle = launch_replica(order, self.spec.placements(), self._providers, self.attempts)
        if handle is None:
            self._launch_after = now + self._backoff
            self._message = (
                f"replica {replica_id} could not be launched on any candidate "
                f"(see attempts); retrying in {self._backoff:g}s"
            )
            self._backoff = min(self._backoff * 2, LAUNCH_BACKOFF_SECONDS[1])
            return False
        self._backoff = LAUNCH_BACKOFF_SECONDS[0]
        self._message = None
        self.replicas[replica_id] = Replica(
            replica_id, self.version, handle, ProbeState.starting(self._clock())
        )
        log.info(
            "launched replica %s (version %s) at %s", replica_id, self.version, handle.endpoint
        )
        return True

    # ---- helpers ----------------------------------------------------------------------------

    def _sync_lb(self) -> None:
        urls = [
            r.url
            for r in sorted(self.replicas.values(), key=lambda r: r.replica_id)
            if r.url is not None and r.current is ReplicaStatus.READY
        ]
        if urls != self._lb_urls and self._lb is not None:
            self._lb.set_replicas(urls)
            self._lb_urls = urls

    def _terminate(self, replica: Replica) -> bool:
        """Terminate the replica's resource; False (handle kept, retried later) on an error."""
        if replica.handle is None:
            return True
        provider = self._providers.get(replica.handle.placement.cloud)
        if provider is None or self._call(provider.terminate, replica.handle):
            replica.handle = None
            self._probes.pop(replica.replica_id, None)
            return True
        return False

    def _call(self, verb: Callable[[Handle], None], handle: Handle) -> bool:
        try:
            verb(handle)
        except SkyformError as exc:
            self._message = f"{handle.skyform_id}: {exc}"
            log.warning("%s", self._message)
            return False
        return True

    def status(self, overall: str | None = None) -> dict[str, Any]:
        ready = sum(1 for r in self.replicas.values() if r.current is ReplicaStatus.READY)
        if overall is None:
            if self._halted:
                overall = "FAILED"
            elif ready or self._target == 0:
                overall = "READY"
            else:
                overall = "NOT_READY" if self._ever_ready else "STARTING"
        return {
            "status": overall,
            "endpoint": self.endpoint,
            "version": self.version,
            "ready_replicas": ready,
            "target_replicas": self._target,
            "replicas": [r.to_json() for _, r in sorted(self.replicas.items())],
            "attempts": list(self.attempts),
            "message": self._halted or self._message,
            "next_replica_id": self._next_id,
            "ever_ready": self._ever_ready,
        }

    def publish(self, overall: str | None = None) -> None:
        write_status(self.directory, self.status(overall))
