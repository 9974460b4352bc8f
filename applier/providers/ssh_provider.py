"""What every provider whose nodes are SSH hosts (AWS, GCP) does the same way: a job's state
from the node drivers' files, logs mirrored while the nodes are reachable, commands on nodes.

A provider subclasses `SshNodesProvider` and supplies how to find a handle's instances
(`_by_handle`), how to reach them (`_nodes`) and where its log mirror lives (`_mirror_of`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from applier.provider import (
    Handle,
    JobState,
    LaunchRequest,
    LogFile,
    ObservedResource,
    ResourceKind,
    ResourceStatus,
)
from applier.providers import cloud_nodes, ssh, ssh_node
from applier.providers import local_files as files
from schema.errors import CapacityError, ProviderError


class NodeGroup(Protocol):
    def states(self, num_nodes: int | None = None) -> list[str]: ...

    def reclaimed(self, handle: Handle) -> bool: ...

    def launched_at(self) -> float: ...

    def private_ips(self) -> list[str]: ...


G = TypeVar("G", bound=NodeGroup)


class SshNodesProvider(Generic[G]):
    # Set by the subclass: where logs are mirrored, Skyform's home (for the SSH key), the
    # provider's settings, and its SSH timing.
    _root: Path
    _home: Path
    _settings: Mapping[str, Any]
    _ssh_timeout: float
    _poll: float
    _boot_timeout: float
    _cloud_label: str  # SKYPILOT_CLUSTER_INFO's cloud, e.g. "AWS"

    def _by_handle(self, handle: Handle) -> G:
        raise NotImplementedError

    def _nodes(self, group: G) -> cloud_nodes.Nodes:
        raise NotImplementedError

    def _boot_detail(self, group: G) -> str:
        """Extra words on why instances ended while booting (the cloud's state reasons)."""
        return ""

    def _wait_running(self, req: LaunchRequest, group: G, refetch: Callable[[G], G]) -> G:
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
            group = refetch(group)

    def _start_runs(self, req: LaunchRequest, group: G) -> None:
        envs = cloud_nodes.node_envs(req, self._cloud_label, group.private_ips(), time.time())
        cloud_nodes.start_runs(self._nodes(group), req, envs)

    def _mirror_of(self, handle: Handle) -> Path:
        return self._root / files.resource_dir_name(handle.address, handle.skyform_id)

    def _ssh_nodes(self, ips: Sequence[str], user: str, resource: str) -> cloud_nodes.Nodes:
        key, _ = ssh.ensure_key(self._home)
        return cloud_nodes.Nodes(
            resource=resource,
            targets=tuple(ssh.target(ip, self._settings, user, key) for ip in ips),
            root=str(self._settings.get("remote_root") or ssh_node.DEFAULT_ROOT),
            mirror=self._root / resource,
            connect_timeout=self._ssh_timeout,
            connect_interval=min(self._poll, 2.0),
        )

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
        return ObservedResource(
            handle=handle,
            status=status,
            job=cloud_nodes.job_state(mirror, states, group.reclaimed(handle)),
            nodes=cloud_nodes.observed_nodes(mirror, states),
            launched_at=launched,
            last_active=launched,
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

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        group = self._by_handle(handle)
        states = group.states(handle.num_nodes)
        if any(s != cloud_nodes.UP for s in states):
            raise ProviderError(f"{handle.address} is not running ({', '.join(states)})")
        return cloud_nodes.exec_all(self._nodes(group), command, node, env)

    @staticmethod
    def check_stoppable(handle: Handle) -> None:
        if handle.kind != ResourceKind.CLUSTER:
            raise ProviderError(f"{handle.address}: only clusters can be stopped; terminate it")
        if handle.placement.use_spot:
            raise ProviderError(f"{handle.address}: spot instances cannot be stopped; terminate")
