"""Reading a resource's state from its pods: a pod evicted, preempted, lost with its node or
deleted outside Skyform is a node lost (the managed-job layer recovers it); a container that
exits non-zero is the user's failure (setup or run, from the termination message).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from applier.provider import (
    Handle,
    JobState,
    ObservedNode,
    ObservedResource,
    Placement,
    ResourceKind,
    ResourceStatus,
)
from applier.providers import kubernetes_pods as pods

# Pod status reasons for a pod the cluster took away (not the user's code ending it).
_LOST_REASONS = frozenset(
    {"Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated",
     "NodeAffinity", "UnexpectedAdmissionError", "OutOfcpu", "OutOfmemory"}
)  # fmt: skip
_PREEMPT_WORDS = ("preempt",)
# Waiting reasons that never resolve by themselves: the image or the pod spec is wrong.
_BAD_START = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
     "CreateContainerError"}
)  # fmt: skip


@dataclass(frozen=True)
class PodView:
    rank: int
    present: bool
    lost: bool = False
    preempted: bool = False
    scheduled: bool = False
    running: bool = False
    ready: bool = False
    exit_code: int | None = None
    stage: str | None = None  # "setup" | "run" of a finished container
    bad_start: str | None = None  # why the container cannot start


def _disruption(pod: Any) -> tuple[bool, bool]:
    """(lost, preempted) from the pod's phase, reason and DisruptionTarget condition."""
    status = pod.status
    reason = (status.reason or "") if status else ""
    conds = (status.conditions if status else None) or []
    target = [c for c in conds if c.type == "DisruptionTarget" and c.status == "True"]
    why = " ".join([reason, *(c.reason or "" for c in target)]).lower()
    preempted = any(w in why for w in _PREEMPT_WORDS)
    lost = (
        pod.metadata.deletion_timestamp is not None
        or (status is not None and status.phase == "Unknown")
        or (
            status is not None
            and status.phase == "Failed"
            and (reason in _LOST_REASONS or bool(target))
        )
    )
    return lost or preempted, preempted


def view_pod(pod: Any, rank: int) -> PodView:
    lost, preempted = _disruption(pod)
    status = pod.status
    scheduled = bool(pod.spec and pod.spec.node_name)
    cstatus = next(iter((status.container_statuses if status else None) or []), None)
    if lost or cstatus is None:
        return PodView(rank, True, lost=lost, preempted=preempted, scheduled=scheduled)
    state = cstatus.state
    if state is not None and state.terminated is not None:
        term = state.terminated
        stage = (term.message or "").strip() or "run"
        return PodView(rank, True, scheduled=True, exit_code=term.exit_code,
                       stage=stage if stage in ("setup", "run") else "run")  # fmt: skip
    if state is not None and state.waiting is not None and state.waiting.reason in _BAD_START:
        why = f"{state.waiting.reason}: {state.waiting.message or ''}".strip(": ")
        return PodView(rank, True, scheduled=scheduled, bad_start=why)
    running = state is not None and state.running is not None
    return PodView(rank, True, scheduled=scheduled, running=running, ready=bool(cstatus.ready))


def views(pod_list: Iterable[Any], num_nodes: int) -> list[PodView]:
    by_rank: dict[int, Any] = {}
    for pod in pod_list:
        rank = (pod.metadata.labels or {}).get(pods.RANK, "")
        if rank.isdigit():
            by_rank[int(rank)] = pod
    return [
        view_pod(by_rank[r], r) if r in by_rank else PodView(r, present=False)
        for r in range(num_nodes)
    ]


def job_state(kind: ResourceKind, nodes: Sequence[PodView], use_spot: bool) -> JobState:
    """Infrastructure first: a lost node makes the run need recovery even if a peer then
    failed because of it (SkyPilot checks cluster health before exit codes)."""
    if any(v.lost or not v.present for v in nodes):
        preempted = any(v.preempted for v in nodes) or use_spot
        return JobState.PREEMPTED if preempted else JobState.NODE_LOST
    if any(v.bad_start for v in nodes):
        return JobState.FAILED_SETUP
    failed = [v for v in nodes if v.exit_code not in (None, 0)]
    if failed:
        return JobState.FAILED_SETUP if failed[0].stage == "setup" else JobState.FAILED
    if all(v.exit_code == 0 for v in nodes):
        return JobState.SUCCEEDED
    if kind == ResourceKind.CLUSTER and all(v.running and v.ready for v in nodes):
        return JobState.SUCCEEDED  # the cluster's run ended with 0 (its readiness probe says)
    if any(v.running or v.exit_code is not None for v in nodes):
        return JobState.RUNNING
    return JobState.PENDING


def resource_status(nodes: Sequence[PodView]) -> ResourceStatus:
    if any(v.lost or not v.present for v in nodes):
        return ResourceStatus.DEGRADED
    if any(not v.scheduled for v in nodes):
        return ResourceStatus.LAUNCHING
    return ResourceStatus.UP


def launch_record(pod: Any) -> dict[str, Any] | None:
    """What the launch recorded on the pod (its `pods.META` annotation); None when the pod is
    not ours, or the record was written by an incompatible Skyform."""
    try:
        data = json.loads((pod.metadata.annotations or {})[pods.META])
    except (KeyError, TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def handle_from_pod(pod: Any) -> Handle | None:
    """The Handle a launch returned, rebuilt from the annotation on any of its pods."""
    meta = launch_record(pod)
    try:
        placement = Placement(**meta["placement"]) if meta is not None else None
    except (KeyError, TypeError, ValueError):
        placement = None
    if meta is None or placement is None:
        return None  # not ours, or written by an incompatible Skyform: leave it alone
    port = next(iter(meta.get("ports") or []), None)
    ip = pod.status.pod_ip if pod.status else None
    kind = ResourceKind(meta["kind"])
    endpoint = None
    if kind == ResourceKind.SERVICE_REPLICA and ip and port is not None:
        endpoint = f"{ip}:{port}"
    labels = pod.metadata.labels or {}
    return Handle(
        provider="kubernetes",
        address=meta["address"],
        skyform_id=meta["skyform_id"],
        kind=kind,
        placement=placement,
        num_nodes=int(meta["num_nodes"]),
        resource_id=f"{pod.metadata.namespace}/{labels.get(pods.RESOURCE, '')}",
        task_id=meta["task_id"],
        endpoint=endpoint,
        ports=tuple(meta.get("ports") or ()),
    )


def _seconds(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def launched_at(pod: Any) -> float:
    return _seconds((launch_record(pod) or {}).get("launched_at"))


def last_used(pod: Any) -> float:
    """When the pod was last used (`pods.ACTIVITY`: interactive sessions, runs); 0 if never."""
    return _seconds((pod.metadata.annotations or {}).get(pods.ACTIVITY))


def observed(handle: Handle, pod_list: Sequence[Any]) -> ObservedResource:
    """The resource from its pods as listed (no call of its own). Autostop: pods cannot be
    stopped, so only an autostop with `down` is reported (the cluster is then terminated);
    a plain autostop is not enforced here, as on SkyPilot's Kubernetes."""
    nodes = views(pod_list, handle.num_nodes)
    job = job_state(handle.kind, nodes, handle.placement.use_spot)
    started = max((launched_at(p) for p in pod_list), default=0.0)
    used = max((last_used(p) for p in pod_list), default=0.0)
    records = [m for m in map(launch_record, pod_list) if m]
    record = next(iter(records), {})
    down = bool(record.get("autostop_down"))
    # The setup hash the pods ran, when their records agree (else unknown: None).
    hashes = {str(m.get("setup_hash") or "") for m in records}
    minutes = record.get("autostop_minutes") if down else None
    return ObservedResource(
        handle=handle,
        status=resource_status(nodes),
        job=job,
        nodes=tuple(
            ObservedNode(
                rank=v.rank,
                alive=v.present and not v.lost,
                exit_code=v.exit_code,
                failed_stage=v.stage if v.exit_code not in (None, 0) else None,
            )
            for v in nodes
        ),
        launched_at=started,
        last_active=max(started, used),
        setup_hash=(hashes.pop() or None) if len(hashes) == 1 else None,
        autostop_minutes=None if minutes is None else int(minutes),
        autostop_down=down,
    )
