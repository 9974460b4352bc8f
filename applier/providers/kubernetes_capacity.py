"""What a Kubernetes cluster has free, computed as SkyPilot does: per node, allocatable minus
the requests of its Running/Pending pods; the GPU type from the node labels real clusters carry,
mapped to catalog names (H100, A100-80GB, T4...). Plain data in, plain data out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
# SkyPilot's detection order (LABEL_FORMATTER_REGISTRY): the first key a node carries wins.
GPU_LABEL_KEYS = (
    "skypilot.co/accelerator",
    "cloud.google.com/gke-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
    "nvidia.com/gpu.product",
    "gpu.nvidia.com/class",
    "nebius.com/gpu-name",
)
# Taints a GPU pod tolerates (the GPU operator's and GKE's); nodes with others are not usable.
GPU_TAINT_KEYS = frozenset({GPU_RESOURCE, "nvidia.com/gpu.present"})
_KNOWN_GPUS = (
    "GB200", "B200", "H200", "H100", "A100", "A10G", "A10", "L40S", "L40", "L4", "T4", "V100",
    "P100", "P4", "K80", "A40", "A6000", "RTX6000", "MI300X",
)  # fmt: skip
_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "m": 1e-3, "": 1.0,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)$")


def quantity(text: Any) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "2") in base units (cores, bytes, devices)."""
    m = _QUANTITY.match(str(text).strip())
    if m is None or m.group(2) not in _SUFFIX:
        return 0.0  # an unparseable value never makes capacity look bigger
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def canonical_gpu(value: str) -> str:
    """A label value as a catalog accelerator name: `NVIDIA-H100-80GB-HBM3` -> H100,
    `nvidia-tesla-t4` -> T4, `nvidia-a100-80gb` -> A100-80GB, `h100` -> H100."""
    tokens = [t for t in re.split(r"[-_ ]+", value.upper()) if t]
    for token in tokens:
        if token in _KNOWN_GPUS:
            if token == "A100" and "80GB" in tokens:
                return "A100-80GB"
            if token == "V100" and "32GB" in tokens:
                return "V100-32GB"
            return token
    rest = [t for t in tokens if t not in ("NVIDIA", "TESLA", "GEFORCE")]
    return "-".join(rest) or value


def node_gpu_label(labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(label key, label value) naming the node's GPU type, by SkyPilot's order."""
    for key in GPU_LABEL_KEYS:
        if labels.get(key):
            return key, labels[key]
    return None


@dataclass(frozen=True)
class NodeFree:
    """One node: its GPU type and totals, what is free on it, and whether pods can land."""

    name: str
    accelerator: str | None
    gpu_label: tuple[str, str] | None
    total_gpus: int
    cpus: float  # free
    memory_gib: float  # free
    gpus: int  # free
    usable: bool


def _usable(node: Any) -> bool:
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    taints = (node.spec.taints if node.spec else None) or []
    blocked = any(
        t.effect in ("NoSchedule", "NoExecute") and t.key not in GPU_TAINT_KEYS for t in taints
    )
    return ready and not blocked


def requests_by_node(pods: Iterable[Any]) -> dict[str, Counter[str]]:
    """Summed container requests of the Running/Pending pods per node name."""
    used: dict[str, Counter[str]] = {}
    for pod in pods:
        node = pod.spec.node_name if pod.spec else None
        if not node or (pod.status and pod.status.phase not in ("Running", "Pending")):
            continue
        total = used.setdefault(node, Counter())
        for c in pod.spec.containers or []:
            res = c.resources
            asked = {**((res.limits or {}) if res else {}), **((res.requests or {}) if res else {})}
            for key, value in asked.items():
                total[key] += quantity(value)  # type: ignore[assignment]
    return used


def nodes_free(nodes: Iterable[Any], pods: Iterable[Any]) -> list[NodeFree]:
    used = requests_by_node(pods)
    out = []
    for node in nodes:
        status = node.status
        alloc = (status.allocatable if status else None) or {}
        cap = (status.capacity if status else None) or {}
        mine = used.get(node.metadata.name, Counter())
        label = node_gpu_label(node.metadata.labels or {})
        total_gpus = int(
            max(quantity(alloc.get(GPU_RESOURCE, 0)), quantity(cap.get(GPU_RESOURCE, 0)))
        )
        free_gpus = quantity(alloc.get(GPU_RESOURCE, 0)) - mine[GPU_RESOURCE]
        out.append(
            NodeFree(
                name=node.metadata.name,
                accelerator=canonical_gpu(label[1]) if label and total_gpus else None,
                gpu_label=label if total_gpus else None,
                total_gpus=total_gpus,
                cpus=max(quantity(alloc.get("cpu", 0)) - mine["cpu"], 0.0),
                memory_gib=max((quantity(alloc.get("memory", 0)) - mine["memory"]) / 2**30, 0.0),
                gpus=max(math.floor(free_gpus + 1e-9), 0),
                usable=_usable(node),
            )
        )
    return out


def shapes(free: Iterable[NodeFree]) -> list[tuple[NodeFree, int]]:
    """Usable nodes grouped by identical free shape: (a representative, how many)."""
    groups: dict[tuple[Any, ...], list[NodeFree]] = {}
    for n in free:
        if n.usable:
            key = (n.accelerator, round(n.cpus, 3), round(n.memory_gib, 3), n.gpus)
            groups.setdefault(key, []).append(n)
    return [
        (group[0], len(group)) for _, group in sorted(groups.items(), key=lambda kv: str(kv[0]))
    ]


def pod_price(
    pricing: Mapping[str, Any] | None,
    cpus: float,
    memory_gib: float,
    accelerator: str | None,
    gpus: float,
) -> float:
    """$/h of one pod of this shape under the context's pricing (SkyPilot's default: 0)."""
    if not pricing:
        return 0.0
    price = (
        float(pricing.get("cpu") or 0.0) * cpus + float(pricing.get("memory") or 0.0) * memory_gib
    )
    if accelerator and gpus:
        per_gpu = {k.lower(): float(v) for k, v in (pricing.get("accelerators") or {}).items()}
        price += per_gpu.get(accelerator.lower(), 0.0) * gpus
    return price


@dataclass(frozen=True)
class GpuAvailability:
    """One row of `show-gpus --infra kubernetes`: a GPU type in a context."""

    context: str
    accelerator: str
    total: int
    free: int
    nodes: int
    per_node: tuple[int, ...]  # the GPU counts a single pod can ask for, per node

    def as_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "accelerator": self.accelerator,
            "total": self.total,
            "free": self.free,
            "nodes": self.nodes,
            "requestable_per_node": sorted(set(self.per_node)),
        }


def gpu_availability(context: str, free: Iterable[NodeFree]) -> list[GpuAvailability]:
    by_type: dict[str, list[NodeFree]] = {}
    for n in free:
        if n.accelerator:
            by_type.setdefault(n.accelerator, []).append(n)
    return [
        GpuAvailability(
            context=context,
            accelerator=name,
            total=sum(n.total_gpus for n in group),
            free=sum(n.gpus for n in group if n.usable),
            nodes=len(group),
            per_node=tuple(n.total_gpus for n in group),
        )
        for name, group in sorted(by_type.items())
    ]
