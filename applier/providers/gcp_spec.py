"""The GCE resources (REST JSON) Skyform inserts: the instance for one node of a placement
(machine type, guest accelerators, spot scheduling, boot image, labels with autostop among them,
the SSH key in metadata, network tags) and the VPC firewall rule that opens a resource's ports.

Every instance carries the network tag `skyform` and one of its own resource's,
`skyform-<id8>`; the rule `skyform-<id8>-ports` allows TCP from anywhere to that tag on the
request's ports (a service replica's assigned port) and the task's `resources.ports` (numbers
and ranges, merged), as SkyPilot opens a cluster's ports with one rule per cluster."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from applier.provider import LaunchRequest
from applier.providers import cloud_nodes
from applier.providers.gcp_instances import HANDLE_KEY, instance_name, label
from schema.errors import ProviderError

# The catalog's GPU names -> GCE accelerator types (SkyPilot's names, as the plan carries them).
ACCELERATOR_TYPES = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
    "A100": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "L4": "nvidia-l4",
    "H100": "nvidia-h100-80gb",
    "H100-MEGA": "nvidia-h100-mega-80gb",
    "H200": "nvidia-h200-141gb",
    "B200": "nvidia-b200",
}
# These machine families come with their GPUs attached; GCE rejects guestAccelerators on them.
GPU_FAMILIES = ("a2-", "a3-", "a4-", "a4x-", "g2-")
CPU_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
GPU_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204-py310"
)
DEFAULT_DISK_GB = 256
DEFAULT_NETWORK = "global/networks/default"
_NOT_NAME = re.compile(r"[^a-z0-9]")


def network_tag(skyform_id: str) -> str:
    """`skyform-<id8>`: the resource's own network tag (a valid GCE tag, as its rule's name is:
    lowercase letters, digits and inner hyphens)."""
    id8 = _NOT_NAME.sub("-", skyform_id.lower())[:8].strip("-") or "x"
    return f"skyform-{id8}"


def firewall_name(skyform_id: str) -> str:
    return f"{network_tag(skyform_id)}-ports"


def firewall_ports(req: LaunchRequest) -> list[str]:
    """The ports to open, as GCE's `allowed[].ports` writes them; empty: no rule at all."""
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in cloud_nodes.port_ranges(req)]


def network_url(settings: Mapping[str, Any], project: str) -> str:
    """The instances' network (setting `network`) as a firewall's `network` field names it."""
    network = str(settings.get("network") or DEFAULT_NETWORK)
    if "/" not in network:
        return f"projects/{project}/global/networks/{network}"
    return f"projects/{project}/{network}" if network.startswith("global/") else network


def firewall_body(req: LaunchRequest, settings: Mapping[str, Any], project: str) -> dict[str, Any]:
    """The rule that opens the resource's ports to its instances' tag, from anywhere."""
    return {
        "name": firewall_name(req.skyform_id),
        "description": f"Skyform: the ports of {req.address} ({req.skyform_id})",
        "network": network_url(settings, project),
        "direction": "INGRESS",
        "priority": 1000,
        "allowed": [{"IPProtocol": "tcp", "ports": firewall_ports(req)}],
        "sourceRanges": ["0.0.0.0/0"],
        "targetTags": [network_tag(req.skyform_id)],
    }


def guest_accelerators(req: LaunchRequest, zone: str) -> list[dict[str, Any]]:
    p = req.placement
    itype = p.instance_type or ""
    if not p.accelerator or itype.startswith(GPU_FAMILIES):
        return []
    if p.accelerator.lower().startswith("tpu"):
        raise ProviderError(f"{req.address}: TPUs are not supported by Skyform's gcp provider yet")
    kind = ACCELERATOR_TYPES.get(p.accelerator)
    if kind is None:
        raise ProviderError(f"{req.address}: GCE has no accelerator type for {p.accelerator!r}")
    return [
        {
            "acceleratorType": f"zones/{zone}/acceleratorTypes/{kind}",
            "acceleratorCount": math.ceil(p.accelerator_count),
        }
    ]


def image(req: LaunchRequest, settings: Mapping[str, Any]) -> str:
    wanted = req.task.resources.image_id
    if isinstance(wanted, dict):
        wanted = wanted.get(req.placement.region or "")
    if isinstance(wanted, str) and wanted.startswith(("projects/", "https://")):
        return wanted
    if settings.get("image_id"):
        return str(settings["image_id"])
    return GPU_IMAGE if req.placement.accelerator else CPU_IMAGE


def scheduling(req: LaunchRequest, gpus: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if gpus:
        out["onHostMaintenance"] = "TERMINATE"  # GPU instances cannot live-migrate
    if req.placement.use_spot:
        out |= {
            "provisioningModel": "SPOT",
            # Deleted on preemption: nothing billed is left behind, and the job controller
            # relaunches (the provider also reads a TERMINATED spot instance as preempted).
            "instanceTerminationAction": "DELETE",
            "automaticRestart": False,
            "onHostMaintenance": "TERMINATE",
        }
    return out


def instance_body(
    req: LaunchRequest,
    zone: str,
    rank: int,
    settings: Mapping[str, Any],
    user: str,
    public_key: str,
    handle_json: str,
) -> dict[str, Any]:
    p = req.placement
    accelerators = guest_accelerators(req, zone)
    gpus = bool(p.accelerator)
    labels = {label(k): label(v) for k, v in (req.task.resources.labels or {}).items()}
    labels |= {
        "skyform-id": label(req.skyform_id),
        "skyform-address": label(req.address),
        "skyform-kind": label(req.kind.value),
        "skyform-rank": str(rank),
    }
    autostop = cloud_nodes.autostop_mark(req)
    if autostop is not None:
        labels[cloud_nodes.AUTOSTOP_KEY] = autostop
    body: dict[str, Any] = {
        "name": instance_name(req.address, req.skyform_id, rank),
        "machineType": f"zones/{zone}/machineTypes/{p.instance_type}",
        "labels": labels,
        "tags": {"items": ["skyform", network_tag(req.skyform_id)]},
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "initializeParams": {
                    "sourceImage": image(req, settings),
                    "diskSizeGb": str(req.task.resources.disk_size or DEFAULT_DISK_GB),
                },
            }
        ],
        "networkInterfaces": [
            {
                "network": str(settings.get("network") or DEFAULT_NETWORK),
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
            }
        ],
        "metadata": {
            "items": [
                {"key": "ssh-keys", "value": f"{user}:{public_key.strip()}"},
                {"key": HANDLE_KEY, "value": handle_json},
            ]
        },
        "scheduling": scheduling(req, gpus),
    }
    if accelerators:
        body["guestAccelerators"] = accelerators
    return body
