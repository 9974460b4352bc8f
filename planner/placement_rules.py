"""Catalog-row filters shared by the per-cloud rules, and the rules for clouds whose instance
price already includes its accelerators (AWS, and the generic case for Azure, Lambda, RunPod).

Each rule follows SkyPilot 0.14.1 (`sky/clouds/aws.py`, `sky/catalog/common.py`): pick the
cheapest feasible instance type only, then expand it per region (on-demand) or zone (spot).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from planner.catalog import CatalogRow, CloudCatalog
from planner.placement_types import Amount, Placement, Request

# sky/catalog/aws_catalog.py _DEFAULT_INSTANCE_FAMILY, with _DEFAULT_NUM_VCPUS = 8 and
# _DEFAULT_MEMORY_CPU_RATIO = 4.
AWS_DEFAULT_FAMILIES = ("m6i", "m6id", "m7i", "r6i", "r6id", "r7i", "c6i", "c6id", "c7i")
DEFAULT_CPUS = Amount(8, at_least=True)
DEFAULT_MEMORY = Amount(4, at_least=True, per_cpu=True)
# sky/catalog/common.py: an accelerator count matches within 0.01 (fractional AWS g6f).
COUNT_TOLERANCE = 0.01


def in_scope(row: CatalogRow, region: str | None, zone: str | None) -> bool:
    return (region is None or row.region.lower() == region.lower()) and (
        zone is None or row.zone.lower() == zone.lower()
    )


def fits(row: CatalogRow, cpus: Amount | None, memory: Amount | None) -> bool:
    return (cpus is None or cpus.admits(row.vcpus)) and (
        memory is None or memory.admits(row.memory_gib, row.vcpus)
    )


def cheapest_type(rows: Iterable[CatalogRow], use_spot: bool = False) -> str | None:
    """The instance type of the cheapest row; the earliest row wins a tie (a stable sort)."""
    best: CatalogRow | None = None
    best_price = 0.0
    for row in rows:
        price = row.price_for(use_spot)
        if price is not None and (best is None or price < best_price):
            best, best_price = row, price
    return best.instance_type if best is not None else None


def region_zones(rows: Iterable[CatalogRow], use_spot: bool) -> list[tuple[str, list[str]]]:
    """Regions with their zones, ordered as `catalog.get_region_zones`: by (price, region, zone);
    rows without a price for this mode are dropped."""
    priced = [r for r in rows if r.price_for(use_spot) is not None]
    priced.sort(key=lambda r: (r.price_for(use_spot), r.region, r.zone))
    order: dict[str, list[str]] = {}
    for row in priced:
        zones = order.setdefault(row.region, [])
        if row.zone and row.zone not in zones:
            zones.append(row.zone)
    return list(order.items())


def matches_count(row: CatalogRow, count: float) -> bool:
    return abs(row.acc_count - count) <= COUNT_TOLERANCE


def _min_price(rows: Iterable[CatalogRow], use_spot: bool) -> float | None:
    prices = [p for p in (r.price_for(use_spot) for r in rows) if p is not None]
    return min(prices) if prices else None


def instance_check(req: Request, rows: Sequence[CatalogRow]) -> str | None:
    """Why a named instance type does not satisfy the request's cpus/memory/accelerator."""
    first = rows[0]
    if not fits(first, req.cpus, req.memory):
        return (
            f"{first.instance_type} has {first.vcpus:g} vCPUs and {first.memory_gib:g} GiB, "
            f"which does not satisfy cpus={req.cpus} memory={req.memory}"
        )
    if req.accelerator and not (
        first.accelerator.lower() == req.accelerator.lower()
        and matches_count(first, req.accelerator_count)
    ):
        return f"{first.instance_type} does not carry {req.accelerator}:{req.accelerator_count:g}"
    return None


def _choose_type(req: Request, cat: CloudCatalog, families: tuple[str, ...] | None) -> str | None:
    region, zone = req.region, req.zone
    if req.accelerator:
        rows = [
            r
            for r in cat.accelerator_rows(req.accelerator)
            if matches_count(r, req.accelerator_count)
            and in_scope(r, region, zone)
            and fits(r, req.cpus, req.memory)
        ]
        if req.max_hourly_cost is not None:
            cap = req.max_hourly_cost
            rows = [r for r in rows if (r.price_for(req.use_spot) or cap + 1) <= cap]
        # Accelerator types are ranked by the price of the requested mode (spot or not).
        return cheapest_type(rows, req.use_spot)
    cpus, memory = req.cpus, req.memory
    if cpus is None and memory is None:
        cpus = DEFAULT_CPUS
    if memory is None:
        memory = DEFAULT_MEMORY
    if families is None:
        types = [t for t, rows in cat.by_instance.items() if not rows[0].accelerator]
    else:
        prefixes = tuple(f"{f}." for f in families)
        types = [t for t in cat.by_instance if t.startswith(prefixes)]
    rows = [
        r
        for t in types
        for r in cat.instance_rows(t)
        if in_scope(r, region, zone) and fits(r, cpus, memory)
    ]
    # The default instance type is the cheapest by on-demand price, even for spot requests.
    return cheapest_type(rows, use_spot=False)


def all_in_placements(
    req: Request,
    cat: CloudCatalog,
    families: tuple[str, ...] | None = None,
) -> tuple[list[Placement], str | None]:
    """Placements on a cloud whose instance price includes the accelerators (AWS and alike)."""
    if req.instance_type:
        rows = [
            r for r in cat.instance_rows(req.instance_type) if in_scope(r, req.region, req.zone)
        ]
        if not rows:
            return [], f"{cat.name} offers no {req.instance_type} in {_scope(req)}"
        problem = instance_check(req, rows)
        if problem:
            return [], problem
        itype: str | None = req.instance_type
    else:
        itype = _choose_type(req, cat, families)
        if itype is None:
            return [], f"no {cat.name} instance type satisfies {req.describe()}"
        rows = [r for r in cat.instance_rows(itype) if in_scope(r, req.region, req.zone)]
    return _expand(req, cat.name, rows), None


def _expand(req: Request, cloud: str, rows: list[CatalogRow]) -> list[Placement]:
    spot = req.use_spot
    first = rows[0]
    out = []
    for region, zones in region_zones(rows, spot):
        in_region = [r for r in rows if r.region == region]
        # On-demand prices are per region; spot prices differ per zone, so spot goes per zone.
        scopes: list[str | None] = list(zones) if spot and zones else [None]
        for zone in scopes:
            price = _min_price((r for r in in_region if zone is None or r.zone == zone), spot)
            if price is None or (req.max_hourly_cost is not None and price > req.max_hourly_cost):
                continue
            out.append(
                Placement(
                    cloud=cloud,
                    region=region,
                    zone=zone,
                    instance_type=first.instance_type,
                    accelerator=first.accelerator or None,
                    accelerator_count=first.acc_count,
                    use_spot=spot,
                    hourly_cost=price,
                    vcpus=first.vcpus,
                    memory_gib=first.memory_gib,
                )
            )
    return out


def _scope(req: Request) -> str:
    return "/".join(p for p in (req.region, req.zone) if p) or "any region"


def aws_placements(req: Request, cat: CloudCatalog) -> tuple[list[Placement], str | None]:
    return all_in_placements(req, cat, AWS_DEFAULT_FAMILIES)
