"""Gang scheduling on Kubernetes: after all of a resource's pods are created, wait until every
one is scheduled (a service replica: until it has its IP) or say why the cluster cannot fit
them, from the Unschedulable condition or the scheduler's FailedScheduling events.
"""

from __future__ import annotations

import time
from typing import Any

from applier.provider import LaunchRequest, ResourceKind
from applier.providers import kubernetes_pods as pods
from applier.providers import kubernetes_status as kstatus
from applier.providers.kubernetes_api import Api
from schema.errors import CapacityError


def list_pods(api: Api, ns: str, label_selector: str) -> list[Any]:
    """The pods matching the selector, in rank order."""
    listed = api.call(
        f"list pods in {ns}", api.core.list_namespaced_pod, ns, label_selector=label_selector
    )
    return sorted(listed.items, key=_rank)


def _rank(pod: Any) -> int:
    rank = (pod.metadata.labels or {}).get(pods.RANK, "")
    return int(rank) if rank.isdigit() else -1


def wait_scheduled(
    api: Api,
    ns: str,
    req: LaunchRequest,
    prefix: str,
    timeout_s: float,
    poll_s: float,
    wait_for_autoscaler: bool,
) -> list[Any]:
    """The resource's pods once all are scheduled, or a CapacityError. An Unschedulable pod
    fails at once unless an autoscaler may still add a node (`wait_for_autoscaler`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = list_pods(api, ns, pods.selector(req.skyform_id))
        nodes = kstatus.views(listed, req.num_nodes)
        need_ip = req.kind == ResourceKind.SERVICE_REPLICA
        if all(v.scheduled for v in nodes) and not (need_ip and not listed[0].status.pod_ip):
            return listed
        if any(v.lost or not v.present for v in nodes):
            raise _error(req, api, "a pod vanished (or was evicted) while being scheduled")
        stuck = [m for m in map(unschedulable, listed) if m]
        if stuck and not wait_for_autoscaler:
            raise _error(req, api, stuck[0])
        if time.monotonic() > deadline:
            why = scheduling_events(api, ns, prefix, req.num_nodes)
            raise _error(req, api, why or f"not scheduled within {timeout_s:g}s")
        time.sleep(poll_s)


def unschedulable(pod: Any) -> str | None:
    """The scheduler's message when it marked the pod Unschedulable."""
    for cond in (pod.status.conditions if pod.status else None) or []:
        if (
            cond.type == "PodScheduled"
            and cond.status == "False"
            and cond.reason == "Unschedulable"
        ):
            return str(cond.message or "Unschedulable")
    return None


def scheduling_events(api: Api, ns: str, prefix: str, num_nodes: int) -> str | None:
    """The latest FailedScheduling event message about one of these pods."""
    names = {pods.pod_name(prefix, r) for r in range(num_nodes)}
    events = api.call(
        "list events", api.core.list_namespaced_event, ns, field_selector="reason=FailedScheduling"
    ).items
    mine = [e.message for e in events if e.involved_object and e.involved_object.name in names]
    return str(mine[-1]) if mine else None


def _error(req: LaunchRequest, api: Api, why: str) -> CapacityError:
    return CapacityError(
        f"{req.address}: kubernetes/{api.context} cannot schedule {req.num_nodes} pod(s) of "
        f"{req.placement.describe()} together: {why}",
        req.placement,
    )
