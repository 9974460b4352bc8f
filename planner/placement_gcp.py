"""GCP placement rules: a GPU VM costs host row + accelerator row, hosts follow SkyPilot's
GPU -> machine-family mapping, TPU VMs cost their TPU row, and GCP always expands per zone.

Tables are facts from SkyPilot 0.14.1 `sky/catalog/gcp_catalog.py` and `sky/clouds/gcp.py`.
"""

from __future__ import annotations

from planner.catalog import CatalogRow, CloudCatalog
from planner.placement_rules import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY,
    cheapest_type,
    fits,
    in_scope,
    instance_check,
    matches_count,
    region_zones,
)
from planner.placement_types import Amount, Placement, Request

# _DEFAULT_INSTANCE_FAMILY (CPU-only default) and _DEFAULT_HOST_VM_FAMILY (hosts for GPUs
# outside the fixed mapping).
DEFAULT_FAMILIES = (
    "n2-standard",
    "n2-highmem",
    "n2-highcpu",
    "n4-standard",
    "n4-highcpu",
    "n4-highmem",
)
GPU_HOST_FAMILIES = ("n1-standard", "n1-highmem", "n1-highcpu")
# _ACC_INSTANCE_TYPE_DICTS: accelerator -> count -> the only host types it attaches to.
ACC_INSTANCE_TYPES: dict[str, dict[int, tuple[str, ...]]] = {
    "A100": {
        1: ("a2-highgpu-1g",),
        2: ("a2-highgpu-2g",),
        4: ("a2-highgpu-4g",),
        8: ("a2-highgpu-8g",),
        16: ("a2-megagpu-16g",),
    },
    "A100-80GB": {
        1: ("a2-ultragpu-1g",),
        2: ("a2-ultragpu-2g",),
        4: ("a2-ultragpu-4g",),
        8: ("a2-ultragpu-8g",),
    },
    "L4": {
        1: ("g2-standard-4", "g2-standard-8", "g2-standard-12", "g2-standard-16", "g2-standard-32"),
        2: ("g2-standard-24",),
        4: ("g2-standard-48",),
        8: ("g2-standard-96",),
    },
    "H100": {
        1: ("a3-highgpu-1g",),
        2: ("a3-highgpu-2g",),
        4: ("a3-highgpu-4g",),
        8: ("a3-highgpu-8g",),
    },
    "H100-MEGA": {8: ("a3-megagpu-8g",)},
    "H200": {8: ("a3-ultragpu-8g",)},
    "B200": {8: ("a4-highgpu-8g",)},
}
INSTANCE_TO_ACC = {
    itype: (acc, count)
    for acc, by_count in ACC_INSTANCE_TYPES.items()
    for count, itypes in by_count.items()
    for itype in itypes
}
# _NUM_ACC_TO_NUM_CPU: default host vCPUs for GPUs on n1 hosts; memory defaults to 4 GiB/vCPU.
NUM_ACC_TO_NUM_CPU: dict[str, dict[int, int]] = {
    "K80": {1: 4, 2: 8, 4: 16, 8: 32, 16: 64},
    "V100": {1: 8, 2: 16, 4: 32, 8: 64},
    "T4": {1: 4, 2: 8, 4: 48},
    "P100": {1: 8, 2: 16, 4: 32, 8: 64},
    "DEFAULT": {1: 8, 2: 16, 4: 32, 8: 64, 16: 128},
}
GPU_MEMORY_PER_CPU = 4
# _NUM_ACC_TO_MAX_CPU_AND_MEMORY: the largest n1 host each GPU count attaches to.
NUM_ACC_TO_MAX_CPU_MEM: dict[str, dict[int, tuple[int, int]]] = {
    "K80": {1: (8, 52), 2: (16, 104), 4: (32, 208), 8: (64, 208)},
    "V100": {1: (12, 78), 2: (24, 156), 4: (48, 312), 8: (96, 624)},
    "T4": {1: (48, 312), 2: (48, 312), 4: (96, 624)},
    "P4": {1: (24, 156), 2: (48, 312), 4: (96, 624)},
    "P100": {1: (16, 104), 2: (32, 208), 4: (96, 624)},
}
# sky/clouds/gcp.py: a TPU VM host has 96 vCPUs / 334 GB (240 / 400 for TPU v4).
TPU_VM = "TPU-VM"


def _int_count(count: float) -> int | None:
    return int(count) if count == int(count) else None


def _acc_rows(cat: CloudCatalog, name: str, count: float, req: Request) -> list[CatalogRow]:
    # Region lists use an exact count match (gcp_catalog._get_accelerator).
    return [
        r
        for r in cat.accelerator_rows(name)
        if r.acc_count == count and in_scope(r, req.region, req.zone)
    ]


def _host_for_gpu(req: Request, cat: CloudCatalog, name: str) -> tuple[str | None, str | None]:
    """(host instance type, reason) for a GPU request, as gcp_catalog chooses it."""
    count = _int_count(req.accelerator_count)
    if name in ACC_INSTANCE_TYPES:
        itypes = ACC_INSTANCE_TYPES[name].get(count) if count is not None else None
        if itypes is None:
            return None, f"GCP attaches {name} only in counts {sorted(ACC_INSTANCE_TYPES[name])}"
        rows = [r for t in itypes for r in cat.instance_rows(t) if fits(r, req.cpus, req.memory)]
        found = cheapest_type(rows)
        return found, None if found else f"no GCP {name} host satisfies {req.describe()}"
    table = NUM_ACC_TO_NUM_CPU.get(name, NUM_ACC_TO_NUM_CPU["DEFAULT"])
    cpus, memory = req.cpus, req.memory
    if cpus is None and memory is None:
        default = table.get(count) if count is not None else None
        if default is None:
            return None, f"GCP has no default host for {name}:{req.accelerator_count:g}"
        cpus = Amount(default, at_least=True)
    if memory is None and cpus is not None:
        memory = Amount(int(cpus.value) * GPU_MEMORY_PER_CPU, at_least=True)
    prefixes = tuple(f"{f}-" for f in GPU_HOST_FAMILIES)
    rows = [
        r
        for t in cat.by_instance
        if t.startswith(prefixes)
        for r in cat.instance_rows(t)
        if fits(r, cpus, memory)
    ]
    found = cheapest_type(rows)
    if found is None:
        return None, f"no GCP n1 host satisfies {req.describe()}"
    return found, _attach_problem(name, count, cat.instance_rows(found)[0])


def _attach_problem(name: str, count: int | None, host: CatalogRow) -> str | None:
    """gcp_catalog.check_accelerator_attachable_to_host for GPUs on n1 hosts."""
    limits = NUM_ACC_TO_MAX_CPU_MEM.get(name)
    if limits is None or count not in limits:
        return f"{name}:{count} cannot be attached to a GCP n1 host"
    max_cpus, max_mem = limits[count]
    if (host.vcpus or 0) > max_cpus or (host.memory_gib or 0) > max_mem:
        return f"{name}:{count} attaches to at most {max_cpus} vCPUs / {max_mem} GB on GCP"
    return None


def _tpu_problem(req: Request, name: str) -> str | None:
    cpus, mem = (240, 400) if "v4" in name else (96, 334)
    if req.cpus is not None and not req.cpus.admits(cpus):
        return f"a {name} TPU VM has {cpus} vCPUs, not cpus={req.cpus}"
    if req.memory is not None and not req.memory.admits(mem):
        return f"a {name} TPU VM has {mem} GB memory, not memory={req.memory}"
    return None


def gcp_placements(
    req: Request, cat: CloudCatalog, name: str | None
) -> tuple[list[Placement], str | None]:
    """GCP placements for a request whose accelerator name `name` is already canonical."""
    if name and name.lower().startswith("tpu-"):
        return _tpu(req, cat, name)
    if req.instance_type:
        return _named_instance(req, cat, req.instance_type, name)
    if name:
        return _gpu(req, cat, name)
    return _default(req, cat)


def _where(req: Request) -> str:
    return "/".join(p for p in (req.region, req.zone) if p) or "any region"


def _tpu(req: Request, cat: CloudCatalog, name: str) -> tuple[list[Placement], str | None]:
    acc_rows = _acc_rows(cat, name, req.accelerator_count, req)
    if not acc_rows:
        return [], f"GCP offers no {name}:{req.accelerator_count:g} in {_where(req)}"
    problem = _tpu_problem(req, name)
    return ([], problem) if problem else (_expand(req, TPU_VM, [], acc_rows), None)


def _named_instance(
    req: Request, cat: CloudCatalog, itype: str, name: str | None
) -> tuple[list[Placement], str | None]:
    host_rows = [r for r in cat.instance_rows(itype) if in_scope(r, req.region, req.zone)]
    if not host_rows:
        return [], f"GCP offers no {itype} in {_where(req)}"
    count = req.accelerator_count
    inferred = INSTANCE_TO_ACC.get(itype)
    problem = instance_check(Request(cpus=req.cpus, memory=req.memory), host_rows)
    if name is None and inferred is not None:
        name, count = inferred
    elif name is not None and name in ACC_INSTANCE_TYPES and inferred != (name, count):
        problem = f"GCP does not attach {name}:{count:g} to {itype}"
    if problem:
        return [], problem
    acc_rows = _acc_rows(cat, name, count, req) if name else []
    return _expand(req, itype, host_rows, acc_rows), None


def _gpu(req: Request, cat: CloudCatalog, name: str) -> tuple[list[Placement], str | None]:
    count = req.accelerator_count
    offered = [
        r
        for r in cat.accelerator_rows(name)
        if matches_count(r, count) and in_scope(r, req.region, req.zone)
    ]
    if not offered:
        return [], f"GCP offers no {name}:{count:g} in {_where(req)}"
    host, problem = _host_for_gpu(req, cat, name)
    if host is None or problem:
        return [], problem
    host_rows = [r for r in cat.instance_rows(host) if in_scope(r, req.region, req.zone)]
    return _expand(req, host, host_rows, _acc_rows(cat, name, count, req)), None


def _default(req: Request, cat: CloudCatalog) -> tuple[list[Placement], str | None]:
    cpus, memory = req.cpus, req.memory
    if cpus is None and memory is None:
        cpus = DEFAULT_CPUS
    if memory is None:
        memory = DEFAULT_MEMORY
    prefixes = tuple(f"{f}-" for f in DEFAULT_FAMILIES)
    rows = [
        r
        for t in cat.by_instance
        if t.startswith(prefixes)
        for r in cat.instance_rows(t)
        if in_scope(r, req.region, req.zone) and fits(r, cpus, memory)
    ]
    host = cheapest_type(rows)
    if host is None:
        return [], f"no GCP default instance type satisfies {req.describe()}"
    host_rows = [r for r in cat.instance_rows(host) if in_scope(r, req.region, req.zone)]
    return _expand(req, host, host_rows, []), None


def _zone_price(rows: list[CatalogRow], zone: str, use_spot: bool, fallback: bool) -> float | None:
    here = [r for r in rows if r.zone == zone]
    prices = [p for p in (r.price_for(use_spot) for r in here) if p is not None]
    if not prices and fallback and use_spot:
        # gcp_catalog.get_accelerator_hourly_cost: no spot price -> the on-demand price.
        prices = [r.price for r in here if r.price is not None]
    return min(prices) if prices else None


def _expand(
    req: Request, itype: str, host_rows: list[CatalogRow], acc_rows: list[CatalogRow]
) -> list[Placement]:
    """One placement per zone; regions ordered by the accelerator rows when there are any."""
    spot = req.use_spot
    if acc_rows:
        order = region_zones(acc_rows, spot)
        if host_rows:
            host_zones = {(r.region, r.zone) for r in host_rows if r.price_for(spot) is not None}
            order = [(reg, [z for z in zones if (reg, z) in host_zones]) for reg, zones in order]
    else:
        order = region_zones(host_rows, spot)
    host = host_rows[0] if host_rows else None
    acc = acc_rows[0] if acc_rows else None
    out = []
    for region, zones in order:
        for zone in zones:
            price = _zone_price(host_rows, zone, spot, False) if host_rows else 0.0
            acc_price = _zone_price(acc_rows, zone, spot, True) if acc_rows else 0.0
            if price is None or acc_price is None:
                continue
            cost = price + acc_price
            if req.max_hourly_cost is not None and cost > req.max_hourly_cost:
                continue
            out.append(
                Placement(
                    cloud="gcp",
                    region=region,
                    zone=zone,
                    instance_type=itype,
                    accelerator=acc.accelerator if acc else None,
                    accelerator_count=acc.acc_count if acc else 0.0,
                    use_spot=spot,
                    hourly_cost=cost,
                    vcpus=host.vcpus if host else None,
                    memory_gib=host.memory_gib if host else None,
                )
            )
    return out
