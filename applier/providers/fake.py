"""An in-memory provider for tests, scriptable: capacity errors in given places, transient errors
N times, preemption and node loss, exit codes; every call is recorded in order.

Jobs run in no time: a launched run reports RUNNING for `run_polls` calls of `job_status` (or
`observe`), then finishes with its scripted exit codes (0 by default), writing its run command
and any scripted output to `run.log` under `log_dir`.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from applier.provider import (
    FreeCapacity,
    Handle,
    JobState,
    LaunchRequest,
    LogFile,
    ObservedNode,
    ObservedResource,
    Placement,
    ResourceKind,
    ResourceStatus,
    Selector,
    node_shape,
    shortfall,
)
from schema.errors import CapacityError, ProviderError, TransientError


@dataclass(frozen=True)
class Call:
    verb: str
    address: str | None = None
    skyform_id: str | None = None
    placement: Placement | None = None
    detail: str | None = None  # the command of `run`


@dataclass(frozen=True)
class PlaceRule:
    """Matches a placement; None fields match anything."""

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None

    def matches(self, p: Placement) -> bool:
        return (
            (self.cloud is None or self.cloud == p.cloud)
            and (self.region is None or self.region == p.region)
            and (self.zone is None or self.zone == p.zone)
            and (self.instance_type is None or self.instance_type == p.instance_type)
        )


@dataclass
class _Resource:
    handle: Handle
    shape: tuple[float, float]
    launched_at: float
    polls_left: int
    exit_codes: tuple[int, ...]
    status: ResourceStatus = ResourceStatus.UP
    job: JobState | None = None  # None while running; set when finished or lost
    lost_ranks: set[int] = field(default_factory=set)
    last_active: float = 0.0


class FakeProvider:
    """Implements `Provider` in memory. Script it before (or while) the code under test runs."""

    def __init__(
        self,
        name: str = "fake",
        capacity: list[FreeCapacity] | None = None,
        log_dir: Path | None = None,
        run_polls: int = 1,
    ) -> None:
        self.name = name
        self.calls: list[Call] = []
        self._capacity = list(capacity or [])
        self._log_dir = log_dir
        self._run_polls = run_polls
        self._resources: dict[str, _Resource] = {}
        self._capacity_rules: list[tuple[PlaceRule, int | None]] = []
        self._transient: dict[str, list[float]] = {}
        self._exit_codes: dict[str, tuple[int, ...]] = {}
        self._output: dict[str, str] = {}
        self._lock = threading.RLock()

    # ---- scripting ------------------------------------------------------------------------

    def fail_capacity(self, rule: PlaceRule, times: int | None = None) -> None:
        """Launches matching `rule` raise CapacityError (`times` times, or always)."""
        with self._lock:
            self._capacity_rules.append((rule, times))

    def fail_transient(self, verb: str, times: int, retry_after: float = 0.0) -> None:
        """The next `times` calls of `verb` raise TransientError(retry_after)."""
        with self._lock:
            self._transient.setdefault(verb, []).extend([retry_after] * times)

    def set_exit_codes(self, address: str, *codes: int) -> None:
        """Exit codes per node for the next launches of `address` (one code: every node)."""
        with self._lock:
            self._exit_codes[address] = codes

    def set_output(self, address: str, text: str) -> None:
        with self._lock:
            self._output[address] = text

    def preempt(self, handle: Handle) -> None:
        """The provider takes the nodes back (spot): nodes gone, the run PREEMPTED."""
        with self._lock:
            res = self._resources[handle.skyform_id]
            res.lost_ranks = set(range(handle.num_nodes))
            res.job = JobState.PREEMPTED if res.job is None else res.job

    def lose_node(self, handle: Handle, rank: int = 0) -> None:
        """A node disappears without recording an exit (killed outside Skyform)."""
        with self._lock:
            res = self._resources[handle.skyform_id]
            res.lost_ranks.add(rank)
            res.job = JobState.NODE_LOST if res.job is None else res.job

    def resources(self) -> list[Handle]:
        with self._lock:
            return [r.handle for r in self._resources.values()]

    # ---- the protocol ---------------------------------------------------------------------

    def capacity(self) -> list[FreeCapacity]:
        with self._lock:
            self._record(Call("capacity"))
            self._maybe_transient("capacity")
            return [self._free(c) for c in self._capacity]

    def launch(self, req: LaunchRequest) -> Handle:
        with self._lock:
            self._record(Call("launch", req.address, req.skyform_id, req.placement))
            self._maybe_transient("launch")
            existing = self._resources.get(req.skyform_id)
            if existing is not None:
                return existing.handle
            self._check_capacity(req)
            now = time.time()
            stamp = datetime.fromtimestamp(now).strftime("%Y-%m-%d-%H-%M-%S-%f")
            handle = Handle(
                provider=self.name,
                address=req.address,
                skyform_id=req.skyform_id,
                kind=req.kind,
                placement=req.placement,
                num_nodes=req.num_nodes,
                resource_id=f"{req.address}-{req.skyform_id[:8]}",
                task_id=req.task_id or f"sky-{stamp}_{req.address.partition('.')[2]}_1",
                endpoint=f"127.0.0.1:{req.ports[0]}" if req.ports else None,
                ports=req.ports,
            )
            codes = self._exit_codes.get(req.address, (0,))
            self._resources[req.skyform_id] = _Resource(
                handle=handle,
                shape=node_shape(req),
                launched_at=now,
                polls_left=self._run_polls if req.task.run else 0,
                exit_codes=codes * req.num_nodes if len(codes) == 1 else codes,
                last_active=now,
            )
            self._write_log(handle, (req.task.run or "") + "\n" + self._output.get(req.address, ""))
            return handle

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        with self._lock:
            self._record(Call("observe"))
            self._maybe_transient("observe")
            out = []
            for res in self._resources.values():
                if selector is None or selector.matches(res.handle):
                    out.append(self._observed(res))
            return out

    def job_status(self, handle: Handle) -> JobState:
        with self._lock:
            self._record(Call("job_status", handle.address, handle.skyform_id))
            self._maybe_transient("job_status")
            res = self._resources.get(handle.skyform_id)
            return JobState.NODE_LOST if res is None else self._advance(res)

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        with self._lock:
            self._record(Call("run", handle.address, handle.skyform_id, detail=command))
            self._maybe_transient("run")
            res = self._resources.get(handle.skyform_id)
            res_status = None if res is None else self._status(res)
            if res is None or res_status != ResourceStatus.UP:
                raise ProviderError(f"{handle.address} is {res_status or 'gone'}; cannot run")
            res.last_active = time.time()
            self._write_log(handle, command + "\n", stage="exec")
            return 0

    def log_paths(self, handle: Handle) -> list[LogFile]:
        with self._lock:
            self._record(Call("log_paths", handle.address, handle.skyform_id))
            if self._log_dir is None:
                return []
            base = self._log_dir / handle.resource_id
            return [LogFile(0, p.stem, p) for p in sorted(base.glob("*.log"))]

    def stop(self, handle: Handle) -> None:
        with self._lock:
            self._record(Call("stop", handle.address, handle.skyform_id))
            self._maybe_transient("stop")
            self._require_cluster(handle).status = ResourceStatus.STOPPED

    def start(self, handle: Handle) -> Handle:
        with self._lock:
            self._record(Call("start", handle.address, handle.skyform_id))
            self._maybe_transient("start")
            res = self._require_cluster(handle)
            res.status = ResourceStatus.UP
            res.lost_ranks.clear()
            res.last_active = time.time()
            return res.handle

    def terminate(self, handle: Handle) -> None:
        with self._lock:
            self._record(Call("terminate", handle.address, handle.skyform_id))
            self._maybe_transient("terminate")
            self._resources.pop(handle.skyform_id, None)
            if self._log_dir is not None:
                shutil.rmtree(self._log_dir / handle.resource_id, ignore_errors=True)

    # ---- internals ------------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        self.calls.append(call)

    def _maybe_transient(self, verb: str) -> None:
        queue = self._transient.get(verb)
        if queue:
            retry_after = queue.pop(0)
            raise TransientError(f"fake {verb}: transient failure (scripted)", retry_after)

    def _check_capacity(self, req: LaunchRequest) -> None:
        for i, (rule, times) in enumerate(self._capacity_rules):
            if times != 0 and rule.matches(req.placement):
                if times is not None:
                    self._capacity_rules[i] = (rule, times - 1)
                raise CapacityError(
                    f"{req.address}: no capacity in {req.placement.describe()} (scripted)",
                    req.placement,
                )
        cpus, memory = node_shape(req)
        for cap in self._capacity:
            if cap.cloud == req.placement.cloud and cap.region in (None, req.placement.region):
                why = shortfall(self._free(cap), cpus, memory, req.placement, req.num_nodes)
                if why:
                    raise CapacityError(f"{req.address}: {why}", req.placement)

    def _free(self, cap: FreeCapacity) -> FreeCapacity:
        cpus, memory, gpus = cap.cpus, cap.memory_gib, float(cap.accelerator_count)
        for res in self._resources.values():
            p = res.handle.placement
            holding = res.status == ResourceStatus.UP and self._advance(res, poll=False) in (
                JobState.PENDING,
                JobState.RUNNING,
            )
            if p.cloud == cap.cloud and p.region == cap.region and holding:
                n = res.handle.num_nodes
                cpus -= res.shape[0] * n
                memory -= res.shape[1] * n
                gpus -= p.accelerator_count * n if p.accelerator else 0.0
        return FreeCapacity(
            cap.provider, cap.cloud, cap.region, cpus, memory, cap.accelerator, int(gpus), cap.nodes
        )

    def _advance(self, res: _Resource, poll: bool = True) -> JobState:
        if res.job is not None:
            return res.job
        if res.status == ResourceStatus.STOPPED:
            return JobState.FAILED
        if res.polls_left > 0:
            if poll:
                res.polls_left -= 1
            return JobState.RUNNING
        failed = any(c != 0 for c in res.exit_codes)
        res.job = JobState.FAILED if failed else JobState.SUCCEEDED
        return res.job

    def _status(self, res: _Resource) -> ResourceStatus:
        if res.status == ResourceStatus.UP and res.lost_ranks:
            return ResourceStatus.DEGRADED
        return res.status

    def _observed(self, res: _Resource) -> ObservedResource:
        job = self._advance(res)
        nodes = tuple(
            ObservedNode(
                rank=r,
                alive=r not in res.lost_ranks,
                exit_code=res.exit_codes[r] if job.finished and r < len(res.exit_codes) else None,
            )
            for r in range(res.handle.num_nodes)
        )
        return ObservedResource(
            handle=res.handle,
            status=self._status(res),
            job=job,
            nodes=nodes,
            launched_at=res.launched_at,
            last_active=res.last_active,
        )

    def _require_cluster(self, handle: Handle) -> _Resource:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be stopped or started")
        res = self._resources.get(handle.skyform_id)
        if res is None:
            raise ProviderError(f"{handle.address} does not exist in {self.name}")
        return res

    def _write_log(self, handle: Handle, text: str, stage: str = "run") -> None:
        if self._log_dir is None:
            return
        base = self._log_dir / handle.resource_id
        base.mkdir(parents=True, exist_ok=True)
        with (base / f"{stage}.log").open("a") as fh:
            fh.write(text)
