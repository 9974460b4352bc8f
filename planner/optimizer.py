"""The optimizer: a task's resource candidates x search space x catalog x live offerings ->
placements ranked cheapest first, with a deterministic tie-break. Pure: no I/O, no clock.

Rules follow SkyPilot 0.14.1 (`sky/optimizer.py`): an `ordered` request uses its first entry
that has any unblocked candidate; an unordered set (`any_of`, several accelerators) competes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from planner.catalog import Catalog
from planner.placement_gcp import gcp_placements
from planner.placement_live import live_placements
from planner.placement_rules import all_in_placements, aws_placements
from planner.placement_types import (
    Blocked,
    LiveOffering,
    Placement,
    PlacementResult,
    Request,
    Target,
    parse_target,
)

LIVE_CLOUDS = ("kubernetes", "local")
INFRA_NOT_ENABLED = "infra-not-enabled"
NO_OFFER = "no-feasible-offer"
ALL_BLOCKED = "all-blocked"


def parse_search_space(space: Sequence[str | Target]) -> tuple[Target, ...]:
    return tuple(t if isinstance(t, Target) else parse_target(t) for t in space)


def _scopes(req: Request, targets: Sequence[Target]) -> list[Request]:
    """The request narrowed to each compatible search-space entry (duplicates removed)."""
    out: list[Request] = []
    for t in targets:
        if req.cloud is not None and req.cloud != t.cloud:
            continue
        if req.region and t.region and req.region != t.region:
            continue
        if req.zone and t.zone and req.zone != t.zone:
            continue
        scoped = replace(req, cloud=t.cloud, region=req.region or t.region, zone=req.zone or t.zone)
        if scoped not in out:
            out.append(scoped)
    # A cloud-wide entry already covers the region-limited ones of the same cloud.
    wide = {s.cloud for s in out if s.region is None and s.zone is None}
    return [s for s in out if s.cloud not in wide or (s.region is None and s.zone is None)]


def _one_cloud(
    req: Request, catalog: Catalog, offerings: Sequence[LiveOffering], num_nodes: int
) -> tuple[list[Placement], str | None]:
    cloud = req.cloud or ""
    if cloud in LIVE_CLOUDS:
        return live_placements(req, cloud, req.region, offerings, num_nodes)
    cat = catalog.cloud(cloud)
    if cat is None:
        return [], f"the catalog has no prices for {cloud}"
    name = catalog.canonical_accelerator(req.accelerator) if req.accelerator else None
    req = replace(req, accelerator=name)
    if cloud == "gcp":
        return gcp_placements(req, cat, name)
    if name and name.lower().startswith("tpu-"):
        return [], f"TPUs are only on GCP, not {cloud}"
    if cloud == "aws":
        return aws_placements(req, cat)
    return all_in_placements(req, cat)


def candidates_for(
    req: Request,
    num_nodes: int,
    targets: Sequence[Target],
    catalog: Catalog,
    offerings: Sequence[LiveOffering] = (),
) -> tuple[list[Placement], str | None, str | None]:
    """(placements, reason, reason_code) for one flat request across the search space."""
    scopes = _scopes(req, targets)
    if not scopes:
        space = ", ".join(str(t) for t in targets) or "nothing"
        where = "/".join(p for p in (req.cloud, req.region, req.zone) if p)
        return (
            [],
            f"{req.describe()} requires {where}, not in the search space ({space})",
            (INFRA_NOT_ENABLED),
        )
    found: list[Placement] = []
    reasons: list[str] = []
    for scoped in scopes:
        placements, reason = _one_cloud(scoped, catalog, offerings, num_nodes)
        found.extend(replace(p, num_nodes=num_nodes) for p in placements)
        if reason:
            reasons.append(reason)
    if found:
        return found, None, None
    return [], "; ".join(reasons) or f"nothing satisfies {req.describe()}", NO_OFFER


def _rank(placements: Sequence[Placement]) -> list[Placement]:
    unique = {p: None for p in placements}
    return sorted(unique, key=Placement.rank_key)


def optimize(
    options: Sequence[Request],
    num_nodes: int,
    search_space: Sequence[str | Target],
    catalog: Catalog,
    *,
    ordered: bool = False,
    offerings: Sequence[LiveOffering] = (),
    blocked: Sequence[Blocked] = (),
) -> PlacementResult:
    """Rank every feasible placement of a task; the first is the choice.

    For `ordered`, the entries' candidate lists follow one another (the first entry with an
    unblocked candidate leads); otherwise all entries compete on price.
    """
    targets = parse_search_space(search_space)
    per_option: list[list[Placement]] = []
    reasons: list[tuple[str, str]] = []
    any_unblocked = False
    for option in options:
        found, reason, code = candidates_for(option, num_nodes, targets, catalog, offerings)
        if reason and code:
            reasons.append((code, reason))
        kept = [p for p in found if not any(b.blocks(p) for b in blocked)]
        if found and not kept:
            reasons.append((ALL_BLOCKED, f"every placement of {option.describe()} is blocked"))
        any_unblocked = any_unblocked or bool(kept)
        per_option.append(kept)
    if not any_unblocked:
        return _infeasible(reasons)
    if ordered:
        merged: list[Placement] = []
        for kept in per_option:
            merged.extend(p for p in _rank(kept) if p not in merged)
        return PlacementResult(tuple(merged))
    return PlacementResult(tuple(_rank([p for kept in per_option for p in kept])))


def _infeasible(reasons: Sequence[tuple[str, str]]) -> PlacementResult:
    if not reasons:
        return PlacementResult((), "the task asks for no resources", NO_OFFER)
    # Report the most actionable code: a blocked or missing offer beats a disabled infra only
    # when some entry reached a cloud at all.
    codes = [c for c, _ in reasons]
    code = next((c for c in (ALL_BLOCKED, NO_OFFER) if c in codes), INFRA_NOT_ENABLED)
    text = "; ".join(dict.fromkeys(r for _, r in reasons))
    return PlacementResult((), text, code)
