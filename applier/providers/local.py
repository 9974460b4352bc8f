"""The `local` provider (the embedded default): this machine, each node a detached process group
in its own directory under the Skyform home, `<home>/local/<address>-<id8>/node-<rank>/`.

- `resource.json` in each resource directory is the provider's tag store (address, skyform id,
  placement, reserved shape, status); it is written atomically before any process starts, so
  `observe()` finds even what a killed `skyform apply` left half-launched.
- Each node's supervisor (`local_node.py`) runs setup (once per setup hash) and run with
  SkyPilot's variables, and records exit codes in files, so jobs outlive the Skyform process.
- A node's `~` is `node-<rank>/home/` (HOME is set to it): the workdir is copied to
  `~/sky_workdir` (the cwd of setup and run) and `~/...` file mounts land there too. Buckets,
  git workdirs and absolute mount destinations are refused at launch with a ProviderError.
- Service replicas (a local-only convention): the replica's assigned port, `req.ports[0]`, is
  given to it as `PORT` and `SKYFORM_REPLICA_PORT`; the server must listen on it.
- Capacity is this machine's CPUs, memory and GPUs, capped by `LocalCaps`, minus what running
  Skyform resources reserved; a launch that does not fit raises CapacityError.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from applier.provider import (
    FreeCapacity,
    Handle,
    JobState,
    LaunchRequest,
    LogFile,
    ObservedResource,
    Placement,
    ResourceKind,
    ResourceStatus,
    Selector,
    node_shape,
    shortfall,
)
from applier.providers import local_files as files
from applier.providers import local_node
from applier.providers import local_nodes as nodes
from applier.providers.local_machine import LocalCaps, Machine, probe_machine
from applier.providers.local_status import job_state, resource_status, view_nodes
from schema.errors import CapacityError, ProviderError
from schema.task import Task


class LocalProvider:
    """See the module docstring. `home` is the Skyform home; nothing global is read."""

    name = "local"

    def __init__(
        self,
        home: Path,
        caps: LocalCaps | None = None,
        machine: Machine | None = None,
        grace_s: float = 3.0,
    ) -> None:
        self._root = home / "local"
        self._home = home
        self._caps = caps or LocalCaps()
        self._machine = machine
        self._grace_s = grace_s
        self._lock = threading.Lock()

    # ---- capacity -------------------------------------------------------------------------

    def machine(self) -> Machine:
        if self._machine is None:
            self._machine = probe_machine()
        return self._caps.apply(self._machine)

    def capacity(self) -> list[FreeCapacity]:
        return [self._free(exclude=None)]

    def _free(self, exclude: Path | None) -> FreeCapacity:
        machine = self.machine()
        names = Counter(g.name for g in machine.gpus)
        accelerator, total_gpus = names.most_common(1)[0] if names else (None, 0)
        cpus, memory, gpus = machine.cpus, machine.memory_gib, float(total_gpus)
        for rdir, meta in self._resources():
            if rdir == exclude or not self._holds_capacity(rdir, meta):
                continue
            n = int(meta["num_nodes"])
            cpus -= float(meta["cpus"]) * n
            memory -= float(meta["memory_gib"]) * n
            if meta["placement"].get("accelerator"):
                gpus -= float(meta["placement"]["accelerator_count"]) * n
        return FreeCapacity(
            provider=self.name,
            cloud="local",
            region=None,
            cpus=max(cpus, 0.0),
            memory_gib=max(memory, 0.0),
            accelerator=accelerator,
            accelerator_count=max(int(gpus), 0),
        )

    def _holds_capacity(self, rdir: Path, meta: Mapping[str, Any]) -> bool:
        if meta["status"] == ResourceStatus.LAUNCHING:
            return True
        if meta["status"] != ResourceStatus.UP:
            return False
        return any(n.alive for n in view_nodes(rdir, int(meta["num_nodes"])))

    def _check_capacity(self, req: LaunchRequest, exclude: Path | None = None) -> None:
        cpus, memory = node_shape(req)
        why = shortfall(self._free(exclude), cpus, memory, req.placement, req.num_nodes)
        if why:
            raise CapacityError(
                f"{req.address}: this machine has no room for {req.num_nodes} node(s) of "
                f"{cpus:g} CPUs / {memory:g} GiB: {why}",
                req.placement,
            )

    # ---- launch ---------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> Handle:
        self._validate(req)
        env = files.base_env(req)
        rdir = self._root / files.resource_dir_name(req.address, req.skyform_id)
        with self._global_lock():
            meta = files.read_meta(rdir)
            if meta is None:
                self._check_capacity(req)
                meta = self._create(rdir, req)
        if meta["skyform_id"] != req.skyform_id:
            raise ProviderError(
                f"{rdir} belongs to skyform id {meta['skyform_id']}, not {req.skyform_id}"
            )
        with self._resource_lock(rdir):
            meta = files.read_meta(rdir) or meta
            if meta["status"] == ResourceStatus.LAUNCHING:
                self._start_nodes(rdir, meta, req, env)
                meta = self._update(rdir, status=ResourceStatus.UP)
            elif req.kind == ResourceKind.CLUSTER and meta["setup_hash"] != files.setup_hash(req):
                meta = self._rerun_setup(rdir, meta, req, env)
            autostop = files.autostop_fields(req)
            if any(meta.get(k) != v for k, v in autostop.items()):
                meta = self._update(rdir, **autostop)  # an update changed it in place
        return self._handle(meta)

    def _validate(self, req: LaunchRequest) -> None:
        if req.placement.cloud != "local":
            raise ProviderError(f"{req.address}: placement {req.placement.describe()} is not local")
        if req.num_nodes < 1:
            raise ProviderError(f"{req.address}: num_nodes must be at least 1")
        if req.kind == ResourceKind.SERVICE_REPLICA and not req.ports:
            raise ProviderError(f"{req.address}: a service replica needs its assigned port")
        files.check_sources(req)

    def _create(self, rdir: Path, req: LaunchRequest) -> dict[str, Any]:
        """Write the tag store before anything runs; the rename makes it appear whole."""
        meta = files.new_record(req, time.time())
        self._root.mkdir(parents=True, exist_ok=True)
        tmp = self._root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        local_node.write_json(tmp / "resource.json", meta)
        os.rename(tmp, rdir)
        return meta

    def _update(self, rdir: Path, **changes: Any) -> dict[str, Any]:
        """Read-modify-write of the record under its own lock (never held while waiting on
        anything else), so a `run` noting activity cannot undo a concurrent `stop`."""
        with (rdir / ".meta.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            meta = files.read_meta(rdir)
            if meta is None:
                raise ProviderError(f"{rdir} vanished while Skyform was using it")
            meta.update({k: getattr(v, "value", v) for k, v in changes.items()})
            local_node.write_json(rdir / "resource.json", meta)
        return meta

    def _start_nodes(
        self, rdir: Path, meta: Mapping[str, Any], req: LaunchRequest, env: Mapping[str, str]
    ) -> None:
        n = int(meta["num_nodes"])
        port = req.ports[0] if req.kind == ResourceKind.SERVICE_REPLICA else None
        for rank in range(n):
            node = files.node_dir(rdir, rank)
            if nodes.registered(node):
                continue  # started by an earlier (crashed) launch: adopt, never duplicate
            cwd = files.sync_node(req, node, self._home)
            spec = {
                "cwd": str(cwd),
                "setup": req.task.setup,
                "setup_hash": meta["setup_hash"],
                "run": req.task.run,
                "stay": req.kind == ResourceKind.CLUSTER,
                "record": True,
                "setup_env": files.skypilot_env(meta, rank, "setup", port),
                "run_env": files.skypilot_env(meta, rank, "run", port),
                "peers": [str(files.node_dir(rdir, r)) for r in range(n) if r != rank],
            }
            nodes.spawn(node, spec, env)

    def _rerun_setup(
        self, rdir: Path, meta: dict[str, Any], req: LaunchRequest, env: Mapping[str, str]
    ) -> dict[str, Any]:
        """A cluster relaunched with a new setup (or envs, workdir, mounts) re-syncs and re-runs
        setup on every node, as `sky launch` on an existing cluster does."""
        if meta["status"] != ResourceStatus.UP:
            raise ProviderError(f"{req.address} is {meta['status']}; start it before updating it")
        new_hash = files.setup_hash(req)
        for rank in range(int(meta["num_nodes"])):
            files.sync_node(req, files.node_dir(rdir, rank), self._home)
        if req.task.setup:
            code = nodes.exec_on_nodes(rdir, meta, req.task.setup, None, env, stage="setup")
            if code != 0:
                raise ProviderError(
                    f"{req.address}: setup failed with exit code {code}; see "
                    f"{files.node_dir(rdir, 0) / 'setup.log'}"
                )
        for rank in range(int(meta["num_nodes"])):
            local_node.write_text(files.node_dir(rdir, rank) / "state" / "setup.done", new_hash)
        return self._update(rdir, setup_hash=new_hash, last_active=time.time())

    # ---- observe --------------------------------------------------------------------------

    def _resources(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        if not self._root.is_dir():
            return
        for rdir in sorted(self._root.iterdir()):
            if rdir.name.startswith("."):
                continue
            meta = files.read_meta(rdir)
            if meta is not None:
                yield rdir, meta

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        self._sweep()
        out = []
        for rdir, meta in self._resources():
            handle = self._handle(meta)
            if selector is not None and not selector.matches(handle):
                continue
            out.append(self._observed(rdir, meta, handle))
        return out

    def _observed(self, rdir: Path, meta: Mapping[str, Any], handle: Handle) -> ObservedResource:
        nodes = view_nodes(rdir, handle.num_nodes)
        return ObservedResource(
            handle=handle,
            status=resource_status(handle.kind, meta["status"], nodes),
            job=job_state(meta["status"], nodes),
            nodes=tuple(n.observed() for n in nodes),
            launched_at=float(meta["launched_at"]),
            last_active=float(meta["last_active"]),
            setup_hash=meta.get("setup_hash"),
            autostop_minutes=meta.get("autostop_minutes"),
            autostop_down=bool(meta.get("autostop_down")),
        )

    def _sweep(self) -> None:
        """Remove what a crash left mid-create (`.tmp-*`) or mid-delete (`.trash-*`)."""
        if not self._root.is_dir():
            return
        for entry in self._root.iterdir():
            try:
                age = time.time() - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(".trash-") or (entry.name.startswith(".tmp-") and age > 60):
                shutil.rmtree(entry, ignore_errors=True)

    def job_status(self, handle: Handle) -> JobState:
        rdir, meta = self._find(handle)
        if meta is None:
            return JobState.NODE_LOST
        return job_state(meta["status"], view_nodes(rdir, handle.num_nodes))

    def log_paths(self, handle: Handle) -> list[LogFile]:
        rdir = self._root / handle.resource_id
        out = []
        for rank in range(handle.num_nodes):
            node = files.node_dir(rdir, rank)
            for stage in ("setup", "run", "exec"):
                path = node / f"{stage}.log"
                if stage == "run" or path.exists():
                    out.append(LogFile(rank, stage, path))
        return out

    # ---- run, stop, start, terminate ------------------------------------------------------

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        rdir, meta = self._find(handle)
        if meta is None or meta["status"] != ResourceStatus.UP:
            state = "gone" if meta is None else meta["status"]
            raise ProviderError(f"{handle.address} is {state}; it must be UP to run commands")
        code = nodes.exec_on_nodes(rdir, meta, command, node, env or {}, stage="exec")
        self._update(rdir, last_active=time.time())
        return code

    def stop(self, handle: Handle) -> None:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be stopped; terminate it")
        rdir, meta = self._find(handle)
        if meta is None:
            raise ProviderError(f"{handle.address} does not exist here; nothing to stop")
        with self._resource_lock(rdir):
            # Recorded first, so an observer never mistakes the stopping nodes for lost ones.
            self._update(rdir, status=ResourceStatus.STOPPED)
            nodes.kill_nodes(rdir, self._grace_s, handle.num_nodes)

    def start(self, handle: Handle) -> Handle:
        """Start a stopped cluster, or bring back the lost nodes of a running one."""
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be started")
        rdir, meta = self._find(handle)
        if meta is None:
            raise ProviderError(f"{handle.address} does not exist here; launch it instead")
        with self._resource_lock(rdir):
            if meta["status"] == ResourceStatus.STOPPED:
                with self._global_lock():
                    self._check_capacity(self._request_for(meta), exclude=rdir)
                    self._update(rdir, status=ResourceStatus.UP)
            for view in view_nodes(rdir, handle.num_nodes):
                if not view.alive:
                    node = files.node_dir(rdir, view.rank)
                    spec = local_node.read_json(node / "state" / "spec.json") or {}
                    idle = {**spec, "setup": None, "run": None, "record": False, "stay": True}
                    nodes.spawn(node, idle, {})
            meta = self._update(rdir, last_active=time.time())
        return self._handle(meta)

    def terminate(self, handle: Handle) -> None:
        rdir, meta = self._find(handle)
        if not rdir.exists() or (meta is None and files.read_meta(rdir) is not None):
            return  # gone already, or the directory holds another skyform id: not ours
        trash = self._root / f".trash-{uuid.uuid4().hex}"
        try:
            with self._resource_lock(rdir):  # waits for a launch that is starting nodes
                num_nodes = handle.num_nodes if meta is None else int(meta["num_nodes"])
                nodes.kill_nodes(rdir, self._grace_s, num_nodes)
                os.rename(rdir, trash)  # atomic: observe() never sees a half-deleted resource
        except FileNotFoundError:
            return  # terminated by someone else meanwhile
        shutil.rmtree(trash, ignore_errors=True)

    # ---- helpers --------------------------------------------------------------------------

    def _find(self, handle: Handle) -> tuple[Path, dict[str, Any] | None]:
        rdir = self._root / handle.resource_id
        meta = files.read_meta(rdir)
        if meta is not None and meta["skyform_id"] != handle.skyform_id:
            return rdir, None
        return rdir, meta

    def _handle(self, meta: Mapping[str, Any]) -> Handle:
        kind = ResourceKind(meta["kind"])
        ports = tuple(int(p) for p in meta.get("ports") or ())
        endpoint = f"{files.NODE_IP}:{ports[0]}" if kind == ResourceKind.SERVICE_REPLICA else None
        return Handle(
            provider=self.name,
            address=str(meta["address"]),
            skyform_id=str(meta["skyform_id"]),
            kind=kind,
            placement=Placement(**meta["placement"]),
            num_nodes=int(meta["num_nodes"]),
            resource_id=files.resource_dir_name(meta["address"], meta["skyform_id"]),
            task_id=str(meta["task_id"]),
            endpoint=endpoint,
            ports=ports,
        )

    def _request_for(self, meta: Mapping[str, Any]) -> LaunchRequest:
        """Enough of a request to re-check capacity for a stopped cluster's reserved shape."""
        placement = Placement(
            **{**meta["placement"], "cpus": meta["cpus"], "memory_gib": meta["memory_gib"]}
        )
        return LaunchRequest(
            address=str(meta["address"]),
            skyform_id=str(meta["skyform_id"]),
            kind=ResourceKind(meta["kind"]),
            task=Task(),
            placement=placement,
            num_nodes=int(meta["num_nodes"]),
        )

    @contextmanager
    def _global_lock(self) -> Iterator[None]:
        """Capacity check and create are one step, across threads and Skyform processes."""
        self._root.mkdir(parents=True, exist_ok=True)
        with self._lock, (self._root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    @contextmanager
    def _resource_lock(self, rdir: Path) -> Iterator[None]:
        with (rdir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


def from_settings(home: Path, settings: Mapping[str, Any]) -> LocalProvider:
    """The registry's factory: `settings` may hold `caps` (cpus, memory_gib, gpus)."""
    return LocalProvider(home, caps=LocalCaps(**(settings.get("caps") or {})))


def check(settings: Mapping[str, Any]) -> str | None:
    return None  # this machine is always there
