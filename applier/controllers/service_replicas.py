"""A service controller's replicas: their record, their deterministic Skyform ids, the free port
each gets, and launching one with failover across the candidate placements."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from applier.controllers.common import ControllerSpec
from applier.provider import (
    Handle,
    LaunchRequest,
    ObservedResource,
    Placement,
    Provider,
    ResourceKind,
)
from applier.serve.probe import ProbeState
from applier.serve.status import ReplicaStatus, ReplicaView
from schema.errors import CapacityError, ProviderError, TransientError
from schema.task import Service, Task

MAX_ATTEMPTS_KEPT = 50


def replica_skyform_id(service_id: str, version: int, replica_id: int) -> str:
    """`<digest8>-<service id>-v<version>-r<replica id>`: the same replica always gets the same
    id, so a restarted controller adopts what it launched instead of launching it twice.

    The digest leads because providers may name a resource by its id's first 8 characters
    (the local provider does), and every replica of one service shares its address.
    """
    digest = hashlib.sha256(f"{service_id}:{version}:{replica_id}".encode()).hexdigest()[:8]
    return f"{digest}-{service_id}-v{version}-r{replica_id}"


def parse_replica_id(service_id: str, skyform_id: str) -> tuple[int, int] | None:
    """(version, replica id) of one of this service's replicas, None for anything else."""
    pattern = rf"[0-9a-f]{{8}}-{re.escape(service_id)}-v(\d+)-r(\d+)"
    match = re.fullmatch(pattern, skyform_id)
    if match is None:
        return None
    version, replica_id = int(match.group(1)), int(match.group(2))
    if replica_skyform_id(service_id, version, replica_id) != skyform_id:
        return None
    return version, replica_id


def service_task(spec: ControllerSpec) -> tuple[Task, Service]:
    """The spec's task and its service section (a ValueError when it has none)."""
    task = spec.tasks().tasks[0].task
    if task.service is None:
        raise ValueError(f"{spec.source_file}: {spec.address} has no 'service:' section")
    return task, task.service


DEFAULT_REPLICA_PORT = 8080  # a service that names no port, as on Kubernetes


def replica_port(task: Task, cloud: str) -> int:
    """The port a replica serves on. Replicas on this machine share its loopback, so each gets
    a free port of its own (as `$PORT`); a replica elsewhere has a host or pod to itself and
    serves on the port the task declares (`service.ports`, else a single `resources.ports`),
    as SkyPilot's replicas do, with `$PORT` set to it too."""
    if cloud == "local":
        return free_port()
    svc = task.service
    if svc is not None and svc.ports:
        return int(svc.ports)
    declared = task.resources.ports or ()
    if len(declared) == 1 and declared[0].isdigit():
        return int(declared[0])
    return DEFAULT_REPLICA_PORT


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0 on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    """One replica as the controller tracks it. `status` overrides the prober's verdict once
    the replica is gone or going (FAILED, PREEMPTED, SHUTTING_DOWN, FAILED_PROVISION)."""

    replica_id: int
    version: int
    handle: Handle | None
    probe: ProbeState
    status: ReplicaStatus | None = None
    message: str | None = None

    @property
    def current(self) -> ReplicaStatus:
        return self.status if self.status is not None else self.probe.status

    @property
    def url(self) -> str | None:
        if self.handle is None or not self.handle.endpoint:
            return None
        return f"http://{self.handle.endpoint}"

    @property
    def live(self) -> bool:
        return not self.current.is_terminal

    def view(self) -> ReplicaView:
        spot = self.handle is not None and self.handle.placement.use_spot
        return ReplicaView(self.replica_id, self.current, self.version, spot)

    def to_json(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "version": self.version,
            "status": self.current.value,
            "url": self.url,
            "placement": None if self.handle is None else self.handle.placement.describe(),
            "handle": None if self.handle is None else self.handle.as_dict(),
            "message": self.message,
        }


def lost_status(observed: ObservedResource | None) -> tuple[ReplicaStatus, str] | None:
    """Why a replica's process is gone, as the status it ends in; None while it runs."""
    if observed is None:
        return ReplicaStatus.PREEMPTED, "its resource disappeared from the provider"
    job = observed.job
    if not job.finished:
        return None
    if job.needs_recovery:
        return ReplicaStatus.PREEMPTED, f"its process was lost ({job.value})"
    # The server exited by itself (any code): a failure of the app, not of the machine.
    return ReplicaStatus.FAILED, f"its server exited ({job.value})"


@dataclass(frozen=True)
class LaunchOrder:
    """What one replica launch needs besides the provider."""

    address: str
    service_id: str
    version: int
    replica_id: int
    task: Task
    base_dir: Path
    use_spot: bool | None = None  # the autoscaler's wish; None: as the placement says


def launch_replica(
    order: LaunchOrder,
    candidates: Sequence[Placement],
    providers: Mapping[str, Provider],
    attempts: list[dict[str, Any]],
) -> Handle | None:
    """Launch on the first candidate with room; every try is appended to `attempts`.

    None when no candidate took it (capacity, a transient error, or a provider error): the
    caller retries later; a provider error is recorded, never raised, so one bad place
    cannot stop the service's other replicas from being looked after.
    """
    skyform_id = replica_skyform_id(order.service_id, order.version, order.replica_id)
    for placement in candidates:
        provider = providers.get(placement.cloud)
        if provider is None:
            why = f"error: no provider for {placement.cloud!r} in this Skyform"
            record_attempt(attempts, order.replica_id, placement, why)
            continue
        if order.use_spot is not None:
            placement = dataclasses.replace(placement, use_spot=order.use_spot)
        req = LaunchRequest(
            address=order.address,
            skyform_id=skyform_id,
            kind=ResourceKind.SERVICE_REPLICA,
            task=order.task,
            placement=placement,
            num_nodes=order.task.num_nodes,
            ports=(replica_port(order.task, placement.cloud),),
            base_dir=order.base_dir,
            replica_id=order.replica_id,
        )
        try:
            handle = provider.launch(req)
        except CapacityError as exc:
            why = f"capacity: {exc}"
        except TransientError as exc:
            why = f"transient: {exc}"
        except ProviderError as exc:
            why = f"error: {exc}"
        else:
            record_attempt(attempts, order.replica_id, placement, "launched")
            return handle
        record_attempt(attempts, order.replica_id, placement, why)
    return None


def record_attempt(
    attempts: list[dict[str, Any]], replica_id: int, placement: Placement, outcome: str
) -> None:
    attempts.append(
        {
            "replica_id": replica_id,
            "placement": placement.describe(),
            "outcome": outcome,
            "at": time.time(),
        }
    )
    del attempts[:-MAX_ATTEMPTS_KEPT]
