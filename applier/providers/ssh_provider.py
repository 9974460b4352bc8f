"""What every provider whose nodes are SSH hosts (AWS, GCP) does the same way: launching (adopt
or create, wait for the instances, start the runs), a job's state from the node drivers' files,
logs mirrored while the nodes are reachable, commands on nodes, starting a stopped cluster, and
activity and autostop kept on the instances themselves.

A provider subclasses `SshNodesProvider` and supplies how to find, create, refetch and discard
a resource's instances, how a handle's resource id names them, and how their tags (AWS) or
labels (GCP) are read and written (`_marks`, `_set_marks`).

Activity (`cloud_nodes.ACTIVITY_KEY`, epoch seconds) is written on every instance by a `run`,
a `start` and interactive use (`skyform ssh/exec/port-forward`, through `record_activity`);
observe() reports the latest of it and the launch time as `last_active`, and the autostop the
resource was launched with (`cloud_nodes.AUTOSTOP_KEY`), for `applier.autostop`; on spot
instances, which cannot be stopped, only an autostop with `down` (as SkyPilot allows). A launch
that adopts running instances (an in-place update, same Skyform id) rewrites that mark when the
request's autostop differs, or removes it when the request has none.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from applier.provider import (
    Handle,
    JobState,
    LaunchRequest,
    LogFile,
    ObservedResource,
    Placement,
    ResourceKind,
    ResourceStatus,
)
from applier.providers import cloud_nodes, ssh, ssh_node
from applier.providers import local_files as files
from schema.errors import CapacityError, ProviderError, TransientError

CONNECT_HINT = "; start it (skyform apply) to connect"


class NodeGroup(Protocol):
    """One resource's instances in node-rank order (`aws_instances`, `gcp_instances`)."""

    items: list[dict[str, Any]]

    def states(self, num_nodes: int | None = None) -> list[str]: ...

    def reclaimed(self, handle: Handle) -> bool: ...

    def launched_at(self) -> float: ...

    def private_ips(self) -> list[str]: ...

    def ssh_ips(self) -> list[str]: ...

    def handle_fields(self) -> dict[str, Any]: ...


G = TypeVar("G", bound=NodeGroup)


def load(cloud: str) -> Any:
    """`applier.providers.<cloud>`, imported on first use: a missing SDK is a ProviderError."""
    try:
        return importlib.import_module(f"applier.providers.{cloud}")
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"{cloud}: the SDK is missing ({exc.name}); "
            f"install it with `pip install 'skyform[{cloud}]'`"
        ) from None


class SshNodesProvider(Generic[G]):
    name: str  # the provider's name, and its directory under Skyform's home
    _cloud_label: str  # SKYPILOT_CLUSTER_INFO's cloud, e.g. "AWS"
    _default_user: str  # the image's SSH user when the settings name none
    _a_placement: str  # how errors name one of its placements: "an aws placement"

    def __init__(self, home: Path, settings: Mapping[str, Any]) -> None:
        self._home = home  # Skyform's home: the SSH key
        self._root = home / self.name  # log mirrors and what Skyform remembers here
        self._settings = dict(settings)
        self._lock = threading.Lock()
        self._boot_timeout = float(settings.get("boot_timeout_s", 600.0))
        self._ssh_timeout = float(settings.get("ssh_timeout_s", 300.0))
        self._poll = float(settings.get("poll_s", 2.0))

    # ---- what a cloud supplies --------------------------------------------------------------

    def _by_handle(self, handle: Handle) -> G:
        """The handle's instances as the cloud lists them now."""
        raise NotImplementedError

    def _adoptable(self, req: LaunchRequest) -> G | None:
        """The instances an earlier launch of `req.skyform_id` left alive or pending."""
        raise NotImplementedError

    def _create(self, req: LaunchRequest) -> G:
        raise NotImplementedError

    def _refetch(self, req: LaunchRequest, group: G) -> G:
        raise NotImplementedError

    def _discard(self, req: LaunchRequest, group: G) -> None:
        """Delete what a failed launch created."""
        raise NotImplementedError

    def _remember(self, handle: Handle) -> None:
        """Note a launched resource (for clouds that forget deleted instances at once)."""

    def _start_stopped(self, handle: Handle, group: G) -> G:
        """Ask the cloud to start the stopped instances; the group to wait on."""
        raise NotImplementedError

    def _resource_id(self, group: G) -> str:
        raise NotImplementedError

    def _marks(self, group: G) -> list[dict[str, str]]:
        """Each instance's tags (AWS) or labels (GCP), by rank."""
        raise NotImplementedError

    def _set_marks(self, handle: Handle, group: G, marks: Mapping[str, str | None]) -> None:
        """Add (or overwrite) `marks` on every instance, keeping the others; a key whose value
        is None is removed."""
        raise NotImplementedError

    def _validate_place(self, req: LaunchRequest) -> None:
        """The cloud's own checks of where the placement is."""

    def _boot_detail(self, group: G) -> str:
        """Extra words on why instances ended while booting (the cloud's state reasons)."""
        return ""

    # ---- launch ---------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> Handle:
        self._validate(req)
        group = self._adoptable(req)
        created = group is None
        if group is None:
            group = self._create(req)
        try:
            group = self._wait_running(req, group)
            handle = self._handle(group)
            self._remember(handle)
            if not created:
                self._update_autostop(req, handle, group)
            # Adopting: the node drivers notice they were started already and are left alone.
            self._start_runs(replace(req, task_id=handle.task_id), group)
        except BaseException:
            if created:  # leave nothing behind; an adopted resource is not ours to end here
                self._discard(req, group)
            raise
        return handle

    def _validate(self, req: LaunchRequest) -> None:
        p = req.placement
        if p.cloud != self.name:
            raise ProviderError(f"{req.address}: placement {p.describe()} is not {self.name}")
        if not p.instance_type:
            raise ProviderError(f"{req.address}: {self._a_placement} needs an instance type")
        self._validate_place(req)
        if req.num_nodes < 1:
            raise ProviderError(f"{req.address}: num_nodes must be at least 1")
        ssh_node.check_task(req.address, req.task)
        files.base_env(req)  # a missing env value fails before anything is created

    def _wait_running(self, req: LaunchRequest, group: G) -> G:
        """Until every node runs; a node ended while booting is a capacity loss."""
        deadline = time.monotonic() + self._boot_timeout
        while True:
            states = group.states(req.num_nodes)
            if cloud_nodes.GONE in states:
                raise CapacityError(
                    f"{req.address}: {states.count(cloud_nodes.GONE)} instance(s) ended while "
                    f"booting{self._boot_detail(group)} on {req.placement.describe()}",
                    req.placement,
                )
            if cloud_nodes.STOPPED in states:
                raise ProviderError(f"{req.address} is stopped; start it before updating it")
            if all(s == cloud_nodes.UP for s in states) and len(states) == req.num_nodes:
                return group
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{req.address}: instances not running after {self._boot_timeout:g}s"
                )
            time.sleep(self._poll)
            group = self._refetch(req, group)

    def _update_autostop(self, req: LaunchRequest, handle: Handle, group: G) -> None:
        """Adopted instances take the request's autostop (a changed `resources.autostop` is an
        in-place update): the mark is rewritten, or removed when the request has none. Read
        from the instances as already listed, so nothing is called when they all agree."""
        wanted = cloud_nodes.autostop_mark(req)
        if any(m.get(cloud_nodes.AUTOSTOP_KEY) != wanted for m in self._marks(group)):
            self._set_marks(handle, group, {cloud_nodes.AUTOSTOP_KEY: wanted})

    def _start_runs(self, req: LaunchRequest, group: G) -> None:
        envs = cloud_nodes.node_envs(req, self._cloud_label, group.private_ips(), time.time())
        cloud_nodes.start_runs(self._nodes(group), req, envs)

    # ---- observe --------------------------------------------------------------------------

    def _observed(self, group: G, handle: Handle) -> ObservedResource:
        states = group.states(handle.num_nodes)
        mirror = cloud_nodes.mirror_states(self._mirror_of(handle), handle.num_nodes)
        if cloud_nodes.GONE in states:
            status = ResourceStatus.DEGRADED
        elif cloud_nodes.PENDING in states:
            status = ResourceStatus.LAUNCHING
        elif cloud_nodes.STOPPED in states:
            status = ResourceStatus.STOPPED
        else:
            status = ResourceStatus.UP
        launched = group.launched_at()
        marks = self._marks(group)
        minutes, down = cloud_nodes.autostop_of(marks)
        if handle.placement.use_spot and not down:
            minutes = None  # spot instances cannot be stopped (`check_stoppable`), only ended
        return ObservedResource(
            handle=handle,
            status=status,
            job=cloud_nodes.job_state(mirror, states, group.reclaimed(handle)),
            nodes=cloud_nodes.observed_nodes(mirror, states),
            launched_at=launched,
            last_active=cloud_nodes.last_active(launched, marks),
            autostop_minutes=minutes,
            autostop_down=down,
        )

    def job_status(self, handle: Handle) -> JobState:
        group = self._by_handle(handle)
        states = group.states(handle.num_nodes)
        mirror = self._mirror_of(handle)
        known = cloud_nodes.mirror_states(mirror, handle.num_nodes)
        finished = cloud_nodes.job_state(known, states, False).finished
        if not finished and all(s == cloud_nodes.UP for s in states):
            nodes = self._nodes(group)
            cloud_nodes.release_when_set_up(nodes, cloud_nodes.refresh(nodes))
            known = cloud_nodes.mirror_states(mirror, handle.num_nodes)
        return cloud_nodes.job_state(known, states, group.reclaimed(handle))

    def log_paths(self, handle: Handle) -> list[LogFile]:
        # Copies the logs' new bytes while the nodes are reachable; once they are gone the
        # mirror holds what was fetched before.
        with contextlib.suppress(ProviderError):
            self.job_status(handle)
        return cloud_nodes.log_files(self._mirror_of(handle), handle.num_nodes)

    # ---- run, start -----------------------------------------------------------------------

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        group = self._running(handle)
        code = cloud_nodes.exec_all(self._nodes(group), command, node, env)
        self._note_activity(handle, group)
        return code

    def start(self, handle: Handle) -> Handle:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be started")
        group = self._by_handle(handle)
        if cloud_nodes.GONE in group.states(handle.num_nodes):
            raise ProviderError(f"{handle.address}: its instances are gone; launch it again")
        group = self._start_stopped(handle, group)
        deadline = time.monotonic() + self._boot_timeout
        while not all(s == cloud_nodes.UP for s in group.states()):
            if time.monotonic() > deadline:
                raise ProviderError(f"{handle.address}: not running {self._boot_timeout:g}s on")
            time.sleep(self._poll)
            group = self._by_handle(handle)
        self._note_activity(handle, group)
        return self._handle(group)

    @staticmethod
    def check_stoppable(handle: Handle) -> None:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be stopped; terminate it")
        if handle.placement.use_spot:
            raise ProviderError(f"{handle.address}: spot instances cannot be stopped; terminate")

    # ---- interactive use (`applier.interactive_cloud.CloudNodes`) -------------------------

    def addresses(self, handle: Handle) -> list[str]:
        """Each node's SSH address by rank; ProviderError unless every node runs."""
        return self._running(handle, CONNECT_HINT).ssh_ips()

    def record_activity(self, handle: Handle) -> None:
        """Interactive use, for autostop; ProviderError unless every node runs."""
        group = self._running(handle, CONNECT_HINT)
        self._set_marks(handle, group, {cloud_nodes.ACTIVITY_KEY: cloud_nodes.activity_stamp()})

    def _note_activity(self, handle: Handle, group: G) -> None:
        """A run or start happened: recorded when the cloud takes it (the work is done)."""
        with contextlib.suppress(ProviderError, TransientError):
            self._set_marks(handle, group, {cloud_nodes.ACTIVITY_KEY: cloud_nodes.activity_stamp()})

    # ---- helpers --------------------------------------------------------------------------

    def _running(self, handle: Handle, hint: str = "") -> G:
        group = self._by_handle(handle)
        states = group.states(handle.num_nodes)
        if any(s != cloud_nodes.UP for s in states):
            raise ProviderError(f"{handle.address} is not running ({', '.join(states)}){hint}")
        return group

    def _handle(self, group: G) -> Handle:
        f = group.handle_fields()
        kind = ResourceKind(f["kind"])
        ports = tuple(int(p) for p in f["ports"])
        endpoint = None
        if kind == ResourceKind.SERVICE_REPLICA and ports:
            endpoint = f"{group.ssh_ips()[0]}:{ports[0]}"
        return Handle(
            provider=self.name,
            address=f["address"],
            skyform_id=f["skyform_id"],
            kind=kind,
            placement=Placement(**f["placement"]),
            num_nodes=int(f["num_nodes"]),
            resource_id=self._resource_id(group),
            task_id=f["task_id"],
            endpoint=endpoint,
            ports=ports,
        )

    def _user(self) -> str:
        return str(self._settings.get("ssh_user") or self._default_user)

    def _nodes(self, group: G) -> cloud_nodes.Nodes:
        f = group.handle_fields()
        key, _ = ssh.ensure_key(self._home)
        resource = files.resource_dir_name(f["address"], f["skyform_id"])
        return cloud_nodes.Nodes(
            resource=resource,
            targets=tuple(
                ssh.target(ip, self._settings, self._user(), key) for ip in group.ssh_ips()
            ),
            root=str(self._settings.get("remote_root") or ssh_node.DEFAULT_ROOT),
            mirror=self._root / resource,
            connect_timeout=self._ssh_timeout,
            connect_interval=min(self._poll, 2.0),
        )

    def _mirror_of(self, handle: Handle) -> Path:
        return self._root / files.resource_dir_name(handle.address, handle.skyform_id)

    def _gone(self) -> set[str]:
        """What Skyform deleted from here: never to be reported or adopted again."""
        gone = self._root / "gone"
        return {p.name for p in gone.iterdir()} if gone.is_dir() else set()

    def _mark_gone(self, key: str) -> None:
        gone = self._root / "gone"
        gone.mkdir(parents=True, exist_ok=True)
        (gone / key).touch()  # first: observe() must never resurrect it
