"""Reading GCE instance resources (REST JSON dicts): label sanitizing, grouping by Skyform id,
node order, states, spot preemption and the metadata a Handle is rebuilt from."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from applier.provider import Handle
from applier.providers import cloud_nodes

HANDLE_KEY = "skyform-handle"  # metadata: JSON too long and too free-form for a label
_STATES = {
    "PROVISIONING": cloud_nodes.PENDING,
    "STAGING": cloud_nodes.PENDING,
    "REPAIRING": cloud_nodes.PENDING,
    "RUNNING": cloud_nodes.UP,
    "STOPPING": cloud_nodes.STOPPED,
    "SUSPENDING": cloud_nodes.STOPPED,
    "SUSPENDED": cloud_nodes.STOPPED,
    "TERMINATED": cloud_nodes.STOPPED,  # GCE's word for a stopped instance
}
_NOT_LABEL = re.compile(r"[^a-z0-9_-]")


def label(value: str) -> str:
    """A GCE label value: lowercase letters, digits, `_` and `-`, at most 63 characters."""
    return _NOT_LABEL.sub("-", value.lower())[:63]


def instance_name(address: str, skyform_id: str, rank: int) -> str:
    """`skyform-<address>-<id8>-<rank>`: a valid, deterministic GCE name (a retried insert
    meets its own instance instead of starting a second one)."""
    stem = re.sub(r"-+", "-", _NOT_LABEL.sub("-", address.lower())).strip("-")[:36]
    return f"skyform-{stem}-{label(skyform_id)[:8]}-{rank}".replace("--", "-")


def is_spot(instance: dict[str, Any]) -> bool:
    scheduling = instance.get("scheduling") or {}
    return scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))


def state_of(instance: dict[str, Any]) -> str:
    state = _STATES.get(str(instance.get("status")), cloud_nodes.GONE)
    # Skyform never stops a spot instance, so a stopped one was reclaimed by GCE.
    return cloud_nodes.GONE if state == cloud_nodes.STOPPED and is_spot(instance) else state


def metadata(instance: dict[str, Any]) -> dict[str, str]:
    items = (instance.get("metadata") or {}).get("items") or ()
    return {str(i.get("key")): str(i.get("value") or "") for i in items}


def zone_of(instance: dict[str, Any]) -> str:
    return str(instance.get("zone") or "").rsplit("/", 1)[-1]


def _rank(instance: dict[str, Any]) -> int:
    return int((instance.get("labels") or {}).get("skyform-rank") or 0)


class Instances:
    """One resource's instances, in node-rank order (the `skyform-rank` label)."""

    def __init__(self, instances: Iterable[dict[str, Any]]) -> None:
        self.items = sorted(instances, key=lambda i: (_rank(i), str(i.get("name"))))

    @property
    def ids(self) -> list[str]:
        return [str(i["name"]) for i in self.items]

    def states(self, num_nodes: int | None = None) -> list[str]:
        """Per rank; ranks whose instance GCE no longer lists are gone."""
        out = [state_of(i) for i in self.items]
        return out + [cloud_nodes.GONE] * max(0, (num_nodes or 0) - len(out))

    def alive_or_pending(self) -> bool:
        return any(state_of(i) != cloud_nodes.GONE for i in self.items)

    def reclaimed(self, handle: Handle) -> bool:
        """GCE took spot capacity back: a spot instance terminated, or gone altogether."""
        if not handle.placement.use_spot:
            return False
        return len(self.items) < handle.num_nodes or any(
            state_of(i) == cloud_nodes.GONE for i in self.items
        )

    def private_ips(self) -> list[str]:
        return [str(_nic(i).get("networkIP") or "") for i in self.items]

    def ssh_ips(self) -> list[str]:
        out = []
        for i in self.items:
            nat = [a.get("natIP") for a in _nic(i).get("accessConfigs") or () if a.get("natIP")]
            out.append(str(nat[0] if nat else _nic(i).get("networkIP") or ""))
        return out

    def launched_at(self) -> float:
        times = []
        for i in self.items:
            stamp = i.get("creationTimestamp")
            if stamp:
                times.append(datetime.fromisoformat(str(stamp)).timestamp())
        return min(times) if times else 0.0

    def handle_fields(self) -> dict[str, Any]:
        """What the launch wrote into the metadata (every node carries the same)."""
        fields: dict[str, Any] = json.loads(metadata(self.items[0])[HANDLE_KEY])
        return fields


def _nic(instance: dict[str, Any]) -> dict[str, Any]:
    nics = instance.get("networkInterfaces") or [{}]
    first: dict[str, Any] = nics[0]
    return first


def group_by_id(instances: Iterable[dict[str, Any]], gone: set[str]) -> dict[str, Instances]:
    """Skyform's resources among `instances`, leaving out what Skyform itself deleted."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        sid = (instance.get("labels") or {}).get("skyform-id")
        if not sid or sid in gone or HANDLE_KEY not in metadata(instance):
            continue
        groups.setdefault(sid, []).append(instance)
    return {sid: Instances(items) for sid, items in groups.items()}
