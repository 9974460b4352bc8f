"""The `Provider` protocol: the few verbs every provider (local, fake, kubernetes, aws, gcp)
implements, and the frozen data that goes in and comes out of them.

Errors a provider raises are `schema.errors` types, chosen by what the caller does next:
`CapacityError` (fail over to the next placement), `TransientError` (retry after `retry_after`),
`ProviderError` (stop and report). SDK exceptions never leave a provider module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from schema.task import Task


class ResourceKind(StrEnum):
    CLUSTER = "cluster"
    JOB = "job"
    SERVICE_REPLICA = "service-replica"


class ResourceStatus(StrEnum):
    """What the provider sees of a resource's nodes (SkyPilot's INIT/UP/STOPPED, plus DEGRADED)."""

    LAUNCHING = "LAUNCHING"  # recorded, nodes not (all) started yet: a crashed launch looks so
    UP = "UP"  # every node is there (a finished job's nodes count as there)
    STOPPED = "STOPPED"  # stopped on purpose; disks/directories kept
    DEGRADED = "DEGRADED"  # a node vanished without Skyform stopping it (killed, preempted)


class JobState(StrEnum):
    """The state of a resource's `run` (a job, a replica's server, a cluster's launch run)."""

    PENDING = "PENDING"
    SETTING_UP = "SETTING_UP"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    PREEMPTED = "PREEMPTED"  # the provider took the nodes back (spot)
    NODE_LOST = "NODE_LOST"  # a node disappeared before recording an exit

    @property
    def finished(self) -> bool:
        """Will not change by itself any more (it may be recovered by relaunching)."""
        return self not in (JobState.PENDING, JobState.SETTING_UP, JobState.RUNNING)

    @property
    def needs_recovery(self) -> bool:
        """Lost to infrastructure, not to user code: the managed-job layer relaunches it."""
        return self in (JobState.PREEMPTED, JobState.NODE_LOST)


@dataclass(frozen=True)
class Placement:
    """Where and on what one resource runs. `cpus`/`memory_gib` are per node; None means the
    provider's default shape (providers that size by instance type may ignore them)."""

    cloud: str
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    accelerator: str | None = None
    accelerator_count: float = 0.0  # per node
    use_spot: bool = False
    cpus: float | None = None
    memory_gib: float | None = None

    def describe(self) -> str:
        where = "/".join(p for p in (self.cloud, self.region, self.zone) if p)
        parts = [where]
        if self.instance_type:
            parts.append(self.instance_type)
        if self.accelerator:
            parts.append(f"{self.accelerator}:{self.accelerator_count:g}")
        if self.use_spot:
            parts.append("spot")
        return " ".join(parts)

    @property
    def gpus_per_node(self) -> int:
        """SKYPILOT_NUM_GPUS_PER_NODE: the accelerator count rounded up (0 without one)."""
        return math.ceil(self.accelerator_count) if self.accelerator else 0


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a provider needs to create one resource; `skyform_id` makes launch idempotent.

    `envs` overrides the task's envs (e.g. `--env`); `task_id` keeps SKYPILOT_TASK_ID the same
    across recoveries of a managed job (None: the provider makes one); `ports` are the ports
    assigned to this resource (a service replica's first port is where it must listen);
    `base_dir` resolves a relative workdir and file-mount sources (the infra repo root).
    """

    address: str
    skyform_id: str
    kind: ResourceKind
    task: Task
    placement: Placement
    num_nodes: int = 1
    ports: tuple[int, ...] = ()
    base_dir: Path = field(default_factory=Path.cwd)
    envs: Mapping[str, str] = field(default_factory=dict)
    task_id: str | None = None
    replica_id: int | None = None


@dataclass(frozen=True)
class Handle:
    """What a provider returns for a resource it created; saved in the state store as a dict."""

    provider: str
    address: str
    skyform_id: str
    kind: ResourceKind
    placement: Placement
    num_nodes: int
    resource_id: str  # the provider's own name for it (a directory, a pod prefix, instance ids)
    task_id: str
    endpoint: str | None = None  # host:port of a service replica
    ports: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["ports"] = list(self.ports)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Handle:
        values = dict(data)
        values["kind"] = ResourceKind(values["kind"])
        values["placement"] = Placement(**values["placement"])
        values["ports"] = tuple(values.get("ports") or ())
        return cls(**values)


@dataclass(frozen=True)
class Selector:
    """Which owned resources `observe` lists; None fields match anything."""

    address: str | None = None
    skyform_id: str | None = None
    kind: ResourceKind | None = None

    def matches(self, handle: Handle) -> bool:
        return (
            (self.address is None or self.address == handle.address)
            and (self.skyform_id is None or self.skyform_id == handle.skyform_id)
            and (self.kind is None or self.kind == handle.kind)
        )


@dataclass(frozen=True)
class ObservedNode:
    rank: int
    alive: bool
    exit_code: int | None = None  # of the stage that ended it (setup or run), once recorded
    failed_stage: str | None = None  # "setup" or "run" when exit_code != 0


@dataclass(frozen=True)
class ObservedResource:
    """One resource as the provider sees it now, found by its tags (address + skyform id)."""

    handle: Handle
    status: ResourceStatus
    job: JobState
    nodes: tuple[ObservedNode, ...]
    launched_at: float  # epoch seconds
    last_active: float  # epoch seconds of the last launch/run/start, for autostop
    setup_hash: str | None = None
    autostop_minutes: int | None = None
    autostop_down: bool = False


@dataclass(frozen=True)
class FreeCapacity:
    """Free capacity of one place right now (the planner's live offering), `nodes` of this shape."""

    provider: str
    cloud: str
    region: str | None
    cpus: float
    memory_gib: float
    accelerator: str | None = None
    accelerator_count: int = 0
    nodes: int = 1
    hourly_price: float = 0.0  # $/h of one task node here (owned capacity: 0 unless priced)


@dataclass(frozen=True)
class LogFile:
    rank: int
    stage: str  # "setup" | "run" | "exec"
    path: Path


@runtime_checkable
class Provider(Protocol):
    """Narrow verbs over one kind of infrastructure. Every verb is safe to retry."""

    @property
    def name(self) -> str: ...

    def capacity(self) -> list[FreeCapacity]:
        """Free capacity now, for placement; empty where the provider sizes by catalog."""
        ...

    def launch(self, req: LaunchRequest) -> Handle:
        """Create the resource and start its setup/run; return without waiting for the run.

        A `skyform_id` that already exists is adopted (its handle returned), never duplicated.
        Raises CapacityError (with `req.placement`), TransientError or ProviderError.
        """
        ...

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        """Everything this provider owns (matching `selector`), in one listing pass."""
        ...

    def job_status(self, handle: Handle) -> JobState:
        """The state of the resource's run; a resource that is gone reports NODE_LOST."""
        ...

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run `command` on one node (or all), wait, append output to the exec log; exit code
        (the first non-zero one by rank when run on several nodes)."""
        ...

    def log_paths(self, handle: Handle) -> list[LogFile]:
        """Local files holding the resource's logs (a remote provider fetches them first)."""
        ...

    def stop(self, handle: Handle) -> None:
        """Stop a cluster's nodes, keeping its disks; ProviderError for other kinds."""
        ...

    def start(self, handle: Handle) -> Handle:
        """Start a stopped cluster again (setup is not re-run when its hash is unchanged)."""
        ...

    def terminate(self, handle: Handle) -> None:
        """Remove the resource and everything it holds; a resource already gone is fine."""
        ...


def node_shape(req: LaunchRequest) -> tuple[float, float]:
    """(cpus, memory GiB) per node: the placement's, else the task's, else SkyPilot's
    Kubernetes defaults (2 vCPUs at 1 GiB each; 4 vCPUs at 4 GiB each with accelerators), the
    same shape the planner sizes live capacity with."""
    gpu = bool(req.placement.accelerator)
    res = req.task.resources
    cpus = req.placement.cpus
    if cpus is None:
        cpus = res.cpus.value if res.cpus is not None else (4.0 if gpu else 2.0)
    memory = req.placement.memory_gib
    if memory is None:
        if res.memory is None:
            memory = cpus * (4.0 if gpu else 1.0)
        elif res.memory.per_cpu:
            memory = cpus * res.memory.value
        else:
            memory = res.memory.value
    return cpus, memory


def shortfall(
    free: FreeCapacity, cpus: float, memory_gib: float, placement: Placement, num_nodes: int
) -> str | None:
    """Why `num_nodes` nodes of this shape do not fit in `free` (None when they fit)."""
    want_gpus = placement.accelerator_count * num_nodes if placement.accelerator else 0.0
    if want_gpus:
        have = (free.accelerator or "").lower()
        if have != (placement.accelerator or "").lower():
            return f"no {placement.accelerator} here (have {free.accelerator or 'no GPUs'})"
        if want_gpus > free.accelerator_count:
            return f"{want_gpus:g} {placement.accelerator} wanted, {free.accelerator_count} free"
    if cpus * num_nodes > free.cpus + 1e-9:
        return f"{cpus * num_nodes:g} CPUs wanted, {free.cpus:g} free"
    if memory_gib * num_nodes > free.memory_gib + 1e-9:
        return f"{memory_gib * num_nodes:g} GiB memory wanted, {free.memory_gib:g} GiB free"
    return None
