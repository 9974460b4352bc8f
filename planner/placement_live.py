"""Placements on live capacity (Kubernetes contexts, this machine), passed in as offerings.

Kubernetes instance types are virtual (`4CPU--16GB--H100:1`), as in SkyPilot; a context fits
when its free nodes can hold `num_nodes` pods of the requested shape.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.placement_types import LiveOffering, Placement, Request

# SkyPilot's Kubernetes defaults when a task names no cpus/memory: 2 vCPUs at 1 GiB each, or
# 4 vCPUs at 4 GiB each when it asks for GPUs (sky/clouds/kubernetes.py).
_DEFAULT_CPUS = 2.0
_DEFAULT_MEM_PER_CPU = 1.0
_DEFAULT_CPUS_GPU = 4.0
_DEFAULT_MEM_PER_CPU_GPU = 4.0


def _shape(req: Request) -> tuple[float, float]:
    gpu = bool(req.accelerator)
    cpus = req.cpus.value if req.cpus else (_DEFAULT_CPUS_GPU if gpu else _DEFAULT_CPUS)
    if req.memory is None:
        memory = cpus * (_DEFAULT_MEM_PER_CPU_GPU if gpu else _DEFAULT_MEM_PER_CPU)
    elif req.memory.per_cpu:
        memory = cpus * req.memory.value
    else:
        memory = req.memory.value
    return cpus, memory


def _pods_per_node(req: Request, offer: LiveOffering, cpus: float, memory: float) -> int:
    if offer.cpus < cpus or offer.memory_gib < memory:
        return 0
    fit = min(int(offer.cpus // cpus), int(offer.memory_gib // memory))
    if req.accelerator:
        name = (offer.accelerator or "").lower()
        if name != req.accelerator.lower() or req.accelerator_count <= 0:
            return 0
        fit = min(fit, int(offer.accelerator_count // req.accelerator_count))
    return fit


def virtual_instance_type(cpus: float, memory: float, req: Request) -> str:
    text = f"{cpus:g}CPU--{memory:g}GB"
    if req.accelerator:
        text += f"--{req.accelerator}:{req.accelerator_count:g}"
    return text


def live_placements(
    req: Request, cloud: str, region: str | None, offerings: Sequence[LiveOffering], num_nodes: int
) -> tuple[list[Placement], str | None]:
    """One placement per context (or for this machine) whose free capacity fits the task."""
    if req.instance_type:
        return [], f"{cloud} has no instance types; ask for cpus/memory/accelerators instead"
    cpus, memory = _shape(req)
    contexts: dict[str | None, list[LiveOffering]] = {}
    for offer in offerings:
        if offer.cloud == cloud and (region is None or offer.region == region):
            contexts.setdefault(offer.region, []).append(offer)
    out = []
    for context, offers in contexts.items():
        usable = [o for o in offers if _pods_per_node(req, o, cpus, memory) > 0]
        capacity = sum(_pods_per_node(req, o, cpus, memory) * o.nodes for o in usable)
        if not usable or capacity < num_nodes:
            continue
        cheapest = min(o.hourly_price for o in usable)
        if req.max_hourly_cost is not None and cheapest > req.max_hourly_cost:
            continue
        out.append(
            Placement(
                cloud=cloud,
                region=context,
                zone=None,
                instance_type=virtual_instance_type(cpus, memory, req),
                accelerator=req.accelerator,
                accelerator_count=req.accelerator_count if req.accelerator else 0.0,
                use_spot=False,
                hourly_cost=cheapest,
                vcpus=cpus,
                memory_gib=memory,
            )
        )
    if not out:
        where = f"{cloud}/{region}" if region else cloud
        return [], f"no free capacity on {where} fits {num_nodes}x {req.describe()}"
    return out, None
