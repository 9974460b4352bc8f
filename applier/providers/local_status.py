"""Reading a local resource's state from its node files: each node's liveness and recorded exit,
and from those the resource's status and its run's JobState.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from applier.provider import JobState, ObservedNode, ResourceKind, ResourceStatus
from applier.providers.local_files import node_dir
from applier.providers.local_node import is_alive, read_json


@dataclass(frozen=True)
class NodeView:
    rank: int
    registered: bool  # its supervisor wrote pid.json
    alive: bool
    exit: dict[str, Any] | None  # {"stage": "setup"|"run"|"aborted", "code": int}
    stage: str | None  # "setup" | "run" | "idle" while it runs

    def observed(self) -> ObservedNode:
        code = None if self.exit is None else int(self.exit["code"])
        failed = str(self.exit["stage"]) if self.exit is not None and code else None
        return ObservedNode(rank=self.rank, alive=self.alive, exit_code=code, failed_stage=failed)


def view_node(resource_dir: Path, rank: int) -> NodeView:
    state = node_dir(resource_dir, rank) / "state"
    pid = read_json(state / "pid.json")
    alive = pid is not None and is_alive(int(pid["pid"]), int(pid["start_time"]))
    try:
        stage: str | None = (state / "stage").read_text().strip() or None
    except FileNotFoundError:
        stage = None
    return NodeView(rank, pid is not None, alive, read_json(state / "exit.json"), stage)


def view_nodes(resource_dir: Path, num_nodes: int) -> list[NodeView]:
    return [view_node(resource_dir, rank) for rank in range(num_nodes)]


def _lost(kind: ResourceKind, node: NodeView) -> bool:
    # A cluster node idles until stopped, so its absence is a loss even after its run ended.
    return not node.alive and (kind == ResourceKind.CLUSTER or node.exit is None)


def resource_status(kind: ResourceKind, recorded: str, nodes: list[NodeView]) -> ResourceStatus:
    status = ResourceStatus(recorded)
    if status != ResourceStatus.UP:
        return status
    return ResourceStatus.DEGRADED if any(_lost(kind, n) for n in nodes) else status


def job_state(recorded: str, nodes: list[NodeView]) -> JobState:
    if recorded == ResourceStatus.LAUNCHING:
        return JobState.PENDING
    exits = [n.exit for n in nodes]
    if all(e is not None for e in exits):
        stages = [(str(e["stage"]), int(e["code"])) for e in exits if e is not None]
        if any(stage == "setup" and code != 0 for stage, code in stages):
            return JobState.FAILED_SETUP
        if any(stage == "aborted" for stage, _ in stages):
            return JobState.FAILED_SETUP  # a peer's setup failed: run started nowhere
        return JobState.FAILED if any(code != 0 for _, code in stages) else JobState.SUCCEEDED
    if recorded == ResourceStatus.STOPPED:
        return JobState.FAILED  # the run was interrupted by stopping the cluster
    if any(n.exit is None and not n.alive for n in nodes):
        return JobState.NODE_LOST
    stages_now = {n.stage for n in nodes if n.exit is None}
    if "setup" in stages_now:
        return JobState.SETTING_UP
    if "run" in stages_now:
        return JobState.RUNNING
    return JobState.PENDING
