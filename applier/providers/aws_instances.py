"""Reading EC2 instance descriptions (plain dicts from DescribeInstances/RunInstances): grouping
by Skyform id, node order, states, spot reclaims and the tags a Handle is rebuilt from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from applier.provider import Handle
from applier.providers import cloud_nodes
from applier.providers import local_files as files

SPOT_RECLAIMED = "Server.SpotInstanceTermination"
_STATES = {
    "pending": cloud_nodes.PENDING,
    "running": cloud_nodes.UP,
    "stopping": cloud_nodes.STOPPED,
    "stopped": cloud_nodes.STOPPED,
    "shutting-down": cloud_nodes.GONE,
    "terminated": cloud_nodes.GONE,
}


def state_of(instance: dict[str, Any]) -> str:
    return _STATES.get(str(instance.get("State", {}).get("Name")), cloud_nodes.GONE)


def tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or ()}


class Instances:
    """One resource's instances, in node-rank order (the launch index RunInstances gave)."""

    def __init__(self, instances: Iterable[dict[str, Any]]) -> None:
        self.items = sorted(
            instances, key=lambda i: (int(i.get("AmiLaunchIndex") or 0), i["InstanceId"])
        )

    @property
    def ids(self) -> list[str]:
        return [i["InstanceId"] for i in self.items]

    def states(self, num_nodes: int | None = None) -> list[str]:
        """Per rank; ranks whose instance EC2 no longer lists are gone."""
        out = [state_of(i) for i in self.items]
        return out + [cloud_nodes.GONE] * max(0, (num_nodes or 0) - len(out))

    def alive_or_pending(self) -> bool:
        return any(state_of(i) != cloud_nodes.GONE for i in self.items)

    def reasons(self) -> str:
        found = {str(i.get("StateReason", {}).get("Code") or "") for i in self.items}
        return ", ".join(sorted(r for r in found if r)) or "no reason given"

    def reclaimed(self, handle: Handle) -> bool:
        """AWS took the capacity back: the spot reason, or a spot instance gone altogether."""
        if any(i.get("StateReason", {}).get("Code") == SPOT_RECLAIMED for i in self.items):
            return True
        return handle.placement.use_spot and len(self.items) < handle.num_nodes

    def private_ips(self) -> list[str]:
        return [str(i.get("PrivateIpAddress") or "") for i in self.items]

    def ssh_ips(self) -> list[str]:
        return [
            str(i.get("PublicIpAddress") or i.get("PrivateIpAddress") or "") for i in self.items
        ]

    def launched_at(self) -> float:
        times = [i["LaunchTime"].timestamp() for i in self.items if i.get("LaunchTime")]
        return min(times) if times else 0.0

    def handle_fields(self) -> dict[str, Any]:
        """What the launch wrote into the tags (the first node's, all nodes carry the same)."""
        t = tags(self.items[0])
        ports = [int(p) for p in t.get("skyform-ports", "").split(",") if p]
        return {
            "address": t["skyform-address"],
            "skyform_id": t["skyform-id"],
            "kind": t["skyform-kind"],
            "task_id": t["skyform-task-id"],
            "num_nodes": int(t["skyform-num-nodes"]),
            "placement": json.loads(t["skyform-placement"]),
            "ports": ports,
            "resource": files.resource_dir_name(t["skyform-address"], t["skyform-id"]),
        }


def group_by_id(instances: Iterable[dict[str, Any]], gone: set[str]) -> dict[str, Instances]:
    """Skyform's resources among `instances`, leaving out what Skyform itself terminated."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        t = tags(instance)
        sid = t.get("skyform-id")
        if not sid or sid in gone or "skyform-address" not in t:
            continue
        groups.setdefault(sid, []).append(instance)
    return {
        sid: Instances(items)
        for sid, items in groups.items()
        if not any(tags(i).get("skyform-terminated") for i in items)
    }
