"""The GCE instance resource (REST JSON) Skyform inserts for one node of a placement: machine
type, guest accelerators, spot scheduling, boot image, labels (autostop among them), and the SSH
key in metadata."""

from __future__ import annotations

import math
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
        "tags": {"items": ["skyform"]},
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
                "network": str(settings.get("network") or "global/networks/default"),
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
