"""A cloud resource's nodes seen through SSH, for any VM provider (AWS, GCP): starting every
node's run with SkyPilot's variables, the multi-node setup barrier, refreshing the local mirror
(state and logs), exec, and the run's JobState from the mirror plus the instances' states;
activity and autostop as the instances' tags (AWS) or labels (GCP) carry them.

The mirror (`<home>/<cloud>/<resource>/node-<rank>/`) keeps the last state read from each node,
so a job that finished is still known as finished after its instances are gone.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from applier.provider import (
    JobState,
    LaunchRequest,
    LogFile,
    ObservedNode,
    Placement,
    ResourceKind,
)
from applier.providers import local_files as files
from applier.providers import ssh, ssh_node
from applier.providers.ssh_node import NodeState

T = TypeVar("T")
UP, PENDING, STOPPED, GONE = "up", "pending", "stopped", "gone"
NOTHING_TO_RUN = NodeState(True, "idle", "run", 0, False, True)
# On every instance: epoch seconds of the last run, start or interactive use.
ACTIVITY_KEY = "skyform-last-active"
# On every instance of a resource launched (or last relaunched, adopting its instances) with
# autostop: `<minutes>`, or `<minutes>-down`.
AUTOSTOP_KEY = "skyform-autostop"


@dataclass(frozen=True)
class Nodes:
    """Where a resource's nodes are reached, and where their mirror lives."""

    resource: str  # `<address>-<id8>`: the directory name on the nodes and in the mirror
    targets: tuple[ssh.Target, ...]  # by rank
    root: str  # the remote root directory (see ssh_node)
    mirror: Path
    connect_timeout: float = 300.0
    connect_interval: float = 2.0

    def rdir(self, rank: int) -> str:
        return ssh_node.node_dir(self.root, self.resource, rank)

    def mirror_dir(self, rank: int) -> Path:
        return self.mirror / f"node-{rank}"

    def on_each(self, fn: Callable[[int, Any], T]) -> list[T]:
        """`fn(rank, client)` on every node at once, results by rank."""

        def one(rank: int) -> T:
            client = ssh.connect(self.targets[rank], self.connect_timeout, self.connect_interval)
            try:
                return fn(rank, client)
            finally:
                client.close()

        with cf.ThreadPoolExecutor(max_workers=min(16, len(self.targets))) as pool:
            return list(pool.map(one, range(len(self.targets))))


def port_ranges(req: LaunchRequest) -> list[tuple[int, int]]:
    """The ports a resource's instances open: the request's (a service replica's assigned
    port) and the task's `resources.ports` (`"8080"`, `"10000-10010"`), sorted and merged."""
    spans = [(p, p) for p in req.ports]
    for text in req.task.resources.ports or ():
        first, _, last = str(text).partition("-")
        spans.append((int(first), int(last or first)))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def node_envs(
    req: LaunchRequest, cloud: str, ips: list[str], now: float
) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Per rank, the (setup, run) environments SkyPilot gives a node (`req.task_id` set: the
    id the resource was tagged with)."""
    meta = files.new_record(req, now)
    base = files.base_env(req)
    info = _cluster_info(str(meta["cluster_name"]), cloud, req.placement)
    joined = "\n".join(ips)
    # A service replica serves on its assigned port ($PORT), as on this machine.
    port = req.ports[0] if req.kind == ResourceKind.SERVICE_REPLICA and req.ports else None
    out = []
    for rank in range(req.num_nodes):
        setup = {**base, **files.skypilot_env(meta, rank, "setup", port)}
        run = {**base, **files.skypilot_env(meta, rank, "run", port)}
        setup |= {"SKYPILOT_SETUP_NODE_IPS": joined, "SKYPILOT_CLUSTER_INFO": info}
        run |= {"SKYPILOT_NODE_IPS": joined, "SKYPILOT_CLUSTER_INFO": info}
        out.append((setup, run))
    return out


def _cluster_info(name: str, cloud: str, placement: Placement) -> str:
    info = {"cluster_name": name, "cloud": cloud, "region": placement.region}
    info["zone"] = placement.zone
    return json.dumps(info)


def start_runs(
    nodes: Nodes, req: LaunchRequest, envs: list[tuple[dict[str, str], dict[str, str]]]
) -> None:
    """Start every node's driver; with several nodes, wait for all setups, then let the runs go
    (or abort them all when one setup failed), as SkyPilot runs setup everywhere first."""
    task = req.task
    if not task.setup and not task.run:
        for rank in range(req.num_nodes):
            ssh_node.write_mirror_state(nodes.mirror_dir(rank), NOTHING_TO_RUN)
        return
    setup_hash = files.setup_hash(req)
    many = req.num_nodes > 1

    def begin(rank: int, client: Any) -> None:
        run = ssh_node.NodeRun(rank, task.setup, task.run, *envs[rank], setup_hash, many)
        ssh_node.start(client, nodes.targets[rank], nodes.rdir(rank), run, task, req.base_dir)

    nodes.on_each(begin)
    if many:
        while not release_when_set_up(nodes, refresh(nodes)):
            time.sleep(1.0)


def release_when_set_up(nodes: Nodes, states: list[NodeState]) -> bool:
    """Release waiting nodes once every setup ended; True when nothing waits any more."""
    failed = any(s.exit_stage == "setup" for s in states)
    if not failed and not all(s.setup_ok for s in states):
        return False
    waiting = [r for r, s in enumerate(states) if s.stage == "wait"]
    if waiting:
        nodes.on_each(
            lambda rank, client: (
                ssh_node.release(client, nodes.rdir(rank), failed) if rank in waiting else None
            )
        )
    return True


def refresh(nodes: Nodes) -> list[NodeState]:
    """Read every node's state and copy its new log bytes into the mirror."""

    def read(rank: int, client: Any) -> NodeState:
        state = ssh_node.read_state(client, nodes.rdir(rank))
        ssh_node.sync_logs(client, nodes.rdir(rank), nodes.mirror_dir(rank))
        ssh_node.write_mirror_state(nodes.mirror_dir(rank), state)
        return state

    return nodes.on_each(read)


def mirror_states(mirror: Path, num_nodes: int) -> list[NodeState | None]:
    return [ssh_node.read_mirror_state(mirror / f"node-{r}") for r in range(num_nodes)]


def job_state(states: list[NodeState | None], instances: list[str], reclaimed: bool) -> JobState:
    """The run's state from the mirrored node states and each node's instance state."""
    exits = [(s.exit_stage, s.exit_code) for s in states if s is not None and s.exit_stage]
    if len(exits) == len(states):
        if any(stage in ("setup", "aborted") for stage, _ in exits):
            return JobState.FAILED_SETUP
        return JobState.FAILED if any(code != 0 for _, code in exits) else JobState.SUCCEEDED
    if GONE in instances:
        return JobState.PREEMPTED if reclaimed else JobState.NODE_LOST
    if STOPPED in instances:
        return JobState.FAILED  # the run was interrupted by stopping the cluster
    if PENDING in instances or any(s is None or not s.started for s in states):
        return JobState.PENDING
    if any(s is not None and not s.alive and not s.exit_stage for s in states):
        return JobState.NODE_LOST  # the driver died (a reboot) without recording an exit
    stages = {s.stage for s in states if s is not None and not s.exit_stage}
    if stages & {"setup", "wait"}:
        return JobState.SETTING_UP
    return JobState.RUNNING if "run" in stages else JobState.PENDING


def observed_nodes(
    states: list[NodeState | None], instances: list[str]
) -> tuple[ObservedNode, ...]:
    out = []
    for rank, (state, inst) in enumerate(zip(states, instances, strict=True)):
        code = state.exit_code if state is not None and state.exit_stage else None
        failed = state.exit_stage if state is not None and code else None
        out.append(ObservedNode(rank, inst == UP, code, failed))
    return tuple(out)


def exec_all(nodes: Nodes, command: str, node: int | None, env: Mapping[str, str] | None) -> int:
    """Run `command` on one node or all; the first non-zero exit code by rank (else 0)."""

    def one(rank: int, client: Any) -> int:
        if node is not None and rank != node:
            return 0
        code = ssh_node.execute(client, nodes.targets[rank], nodes.rdir(rank), command, env or {})
        ssh_node.sync_logs(client, nodes.rdir(rank), nodes.mirror_dir(rank))
        return code

    return next((c for c in nodes.on_each(one) if c != 0), 0)


def log_files(mirror: Path, num_nodes: int) -> list[LogFile]:
    out = []
    for rank in range(num_nodes):
        for stage in ssh_node.LOGS:
            path = mirror / f"node-{rank}" / f"{stage}.log"
            if stage == "run" or path.exists():
                out.append(LogFile(rank, stage, path))
    return out


def activity_stamp() -> str:
    """The value of ACTIVITY_KEY for now: whole epoch seconds (a valid tag and label value)."""
    return str(int(time.time()))


def last_active(launched: float, marks: Iterable[Mapping[str, str]]) -> float:
    """The latest of the launch time and every instance's activity stamp."""
    stamps = [float(v) for m in marks if (v := m.get(ACTIVITY_KEY, "")).isdigit()]
    return max([launched, *stamps])


def autostop_mark(req: LaunchRequest) -> str | None:
    """AUTOSTOP_KEY's value for a resource launched with autostop, else None."""
    autostop = req.task.resources.autostop
    if autostop is None or not autostop.enabled:
        return None
    return f"{autostop.idle_minutes}-down" if autostop.down else str(autostop.idle_minutes)


def autostop_of(marks: Iterable[Mapping[str, str]]) -> tuple[int | None, bool]:
    """(idle minutes, down) from the instances' AUTOSTOP_KEY; (None, False) without one."""
    for m in marks:
        minutes, _, down = m.get(AUTOSTOP_KEY, "").partition("-")
        if minutes.isdigit():
            return int(minutes), down == "down"
    return None, False
