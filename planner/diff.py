"""Desired x observed x catalog -> Plan: the pairing of declared resources with live ones.

A declared resource with no live counterpart is created, a live one with no declaration is
deleted (when the policy prunes), and a pair is compared field by field. Pure: same inputs,
same plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from planner.catalog import Catalog
from planner.order import apply_order, with_dependencies
from planner.placement_schema import optimize_task
from planner.placement_types import Blocked, LiveOffering, Placement, PlacementResult
from planner.plan import Action, Change, Cost, FieldDiff, Finding, PlacementView, Plan, Summary
from planner.policy import check_policies
from planner.spec import flatten, forces_replacement, ignored, spec_hash, spec_of
from schema.repo import DesiredResource, DesiredState
from schema.task import Task

FINISHED = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED"})
RUNNING = frozenset({"PENDING", "STARTING", "SETTING_UP", "RUNNING", "RECOVERING", "UP", "READY"})
MISSING = "MISSING"
FAILOVER_SHOWN = 10


@dataclass(frozen=True)
class Observed:
    """What Skyform knows is live for one address: state store record plus provider refresh."""

    address: str
    kind: str
    spec: dict[str, Any]
    spec_hash: str
    status: str
    placement: PlacementView | None = None
    hourly_cost: float = 0.0
    drift: str | None = None  # true drift found by refresh, e.g. "scaled by hand to 3"
    lifecycle: str | None = None  # a lifecycle event, e.g. "preempted and recovered"
    depends_on: tuple[str, ...] = ()
    ready_replicas: int | None = None


@dataclass(frozen=True)
class PlanInputs:
    desired: DesiredState
    observed: Mapping[str, Observed]
    catalog: Catalog
    offerings: Sequence[LiveOffering] = ()
    blocked: Sequence[Blocked] = ()
    lineage: str | None = None
    serial: int = 0
    commit: str | None = None
    targets: tuple[str, ...] = ()
    search_space: tuple[str, ...] = field(default=())


def view(p: Placement) -> PlacementView:
    return PlacementView(
        cloud=p.cloud,
        region=p.region,
        zone=p.zone,
        instance_type=p.instance_type,
        accelerators=p.accelerators(),
        use_spot=p.use_spot,
        num_nodes=p.num_nodes,
        hourly_cost=round(p.total_hourly_cost, 6),
        vcpus=p.vcpus,
        memory_gib=p.memory_gib,
    )


_CACHE: dict[int, dict[tuple[str, int, tuple[str, ...]], PlacementResult]] = {}


def make_plan(inputs: PlanInputs) -> Plan:
    try:
        return _make_plan(inputs)
    finally:
        _CACHE.pop(id(inputs), None)


def _make_plan(inputs: PlanInputs) -> Plan:
    desired = inputs.desired.resources
    observed = inputs.observed
    findings: list[Finding] = []
    addresses = sorted(set(desired) | set(observed))
    if inputs.targets:
        scope = with_dependencies(inputs.targets, desired, observed)
        unknown = [t for t in inputs.targets if t not in desired and t not in observed]
        findings.extend(Finding("error", f"--target {t}: no such resource") for t in unknown)
        addresses = [a for a in addresses if a in scope]
    space = inputs.search_space or tuple(str(e.infra) for e in inputs.desired.config.infra)
    changes: list[Change] = []
    for address in addresses:
        d, o = desired.get(address), observed.get(address)
        if d is not None and o is None:
            change = _create(d, inputs, space, findings)
        elif d is not None and o is not None:
            change = _compare(d, o, inputs, space, findings)
        else:
            assert o is not None
            change = _orphan(o, inputs.desired.config.policy.prune)
        changes.append(change)
    required = _required_inputs(desired, addresses, findings)
    findings.extend(check_policies(inputs.desired, changes, observed))
    return Plan(
        repo_path=inputs.desired.root,
        repo_commit=inputs.commit,
        lineage=inputs.lineage,
        serial=inputs.serial,
        changes=tuple(changes),
        order=apply_order(changes),
        summary=_summary(changes),
        cost=Cost(
            now=round(sum(c.cost_before for c in changes), 6),
            after=round(sum(c.cost_after for c in changes), 6),
        ),
        findings=tuple(findings),
        targets=tuple(inputs.targets),
        required_inputs=required,
    )


def _replicas(d: DesiredResource) -> int:
    svc = d.source.tasks[0].task.service
    return 1 if svc is None else max(svc.policy.min_replicas, 1)


def _place(
    d: DesiredResource, inputs: PlanInputs, space: tuple[str, ...], findings: list[Finding]
) -> tuple[PlacementView | None, tuple[PlacementView, ...]]:
    """The choice and the failover order. A pipeline's stages are placed one by one; the plan
    shows the costliest stage, since a pipeline runs one stage at a time."""
    best: tuple[PlacementView | None, tuple[PlacementView, ...]] = (None, ())
    for stage in d.source.tasks:
        result = _optimize(stage.task, inputs, space)
        if result.choice is None:
            label = f" (stage {stage.task.name})" if d.source.is_pipeline else ""
            findings.append(
                Finding(
                    "error",
                    f"no feasible placement{label}: {result.reason}",
                    d.address,
                )
            )
            return None, ()
        views = tuple(view(p) for p in result.candidates[: 1 + FAILOVER_SHOWN])
        if best[0] is None or views[0].hourly_cost > best[0].hourly_cost:
            best = (views[0], views[1 : 1 + FAILOVER_SHOWN])
    return best


def _optimize(task: Task, inputs: PlanInputs, space: tuple[str, ...]) -> PlacementResult:
    # Repos repeat the same resource shapes; the optimizer is pure, so one answer per shape.
    key = (task.resources.model_dump_json(), task.num_nodes, space)
    cache = _CACHE.setdefault(id(inputs), {})
    if key not in cache:
        cache[key] = optimize_task(
            task, space, inputs.catalog, offerings=inputs.offerings, blocked=inputs.blocked
        )
    return cache[key]


def _running_cost(d: DesiredResource, placement: PlacementView | None) -> float:
    if placement is None:
        return 0.0
    return round(placement.hourly_cost * (_replicas(d) if d.kind == "service" else 1), 6)


def _create(
    d: DesiredResource,
    inputs: PlanInputs,
    space: tuple[str, ...],
    findings: list[Finding],
    *,
    reasons: tuple[str, ...] = (),
    drift: str | None = None,
) -> Change:
    placement, failover = _place(d, inputs, space, findings)
    after = spec_of(d)
    return Change(
        address=d.address,
        kind=d.kind,
        action=Action.CREATE,
        before=None,
        after=after,
        reasons=reasons,
        placement=placement,
        failover=failover,
        cost_after=_running_cost(d, placement),
        spec_hash=spec_hash(d, after),
        depends_on=d.skyform.depends_on,
        file=d.file,
        drift=drift,
    )


def _field_diffs(
    kind: str, before: dict[str, Any], after: dict[str, Any], ignore: tuple[str, ...]
) -> tuple[FieldDiff, ...]:
    b, a = flatten(before), flatten(after)
    out = []
    for path in sorted(set(b) | set(a)):
        if b.get(path) == a.get(path) or ignored(path, ignore):
            continue
        out.append(FieldDiff(path, b.get(path), a.get(path), forces_replacement(kind, path)))
    return tuple(out)


def _compare(
    d: DesiredResource,
    o: Observed,
    inputs: PlanInputs,
    space: tuple[str, ...],
    findings: list[Finding],
) -> Change:
    policy = inputs.desired.config.policy
    after = spec_of(d)
    new_hash = spec_hash(d, after)
    if o.status == MISSING:
        why = o.drift or "deleted outside Skyform"
        if policy.drift == "correct":
            return _create(
                d, inputs, space, findings, reasons=(f"drift: {why}; recreating",), drift=why
            )
        return _kept(d, o, after, new_hash, (f"drift: {why}; policy.drift={policy.drift}",), why)
    diffs = _field_diffs(d.kind, o.spec, after, d.skyform.ignore_changes)
    if not diffs and (o.spec_hash == new_hash or not d.skyform.ignore_changes):
        if o.spec_hash != new_hash and not diffs:
            diffs = (
                FieldDiff("secrets", "(sensitive value)", "(sensitive value)", d.kind == "job"),
            )
        else:
            return _drift_or_noop(d, o, after, new_hash, inputs, space, findings)
    if not diffs:
        return _kept(d, o, after, new_hash, ("only ignored fields changed",), None)
    replace_needed = d.kind == "job" or any(x.forces_replacement for x in diffs)
    if not replace_needed:
        return Change(
            address=d.address,
            kind=d.kind,
            action=Action.UPDATE,
            before=o.spec,
            after=after,
            diffs=diffs,
            placement=o.placement,
            cost_before=_observed_cost(o),
            cost_after=_running_cost(d, o.placement),
            spec_hash=new_hash,
            depends_on=d.skyform.depends_on,
            file=d.file,
            interrupts=_scale_down(d, o),
        )
    placement, failover = _place(d, inputs, space, findings)
    forced = [x.path for x in diffs if x.forces_replacement]
    changed = ", ".join(x.path for x in diffs)
    reason = (
        f"a job is immutable: {changed} changed, so it re-runs"
        if d.kind == "job"
        else f"{', '.join(forced)} forces replacement"
    )
    return Change(
        address=d.address,
        kind=d.kind,
        action=Action.REPLACE,
        before=o.spec,
        after=after,
        diffs=diffs,
        reasons=(reason,),
        placement=placement,
        failover=failover,
        cost_before=_observed_cost(o),
        cost_after=_running_cost(d, placement),
        spec_hash=new_hash,
        depends_on=d.skyform.depends_on,
        file=d.file,
        interrupts=_interrupts(o, Action.REPLACE),
    )


def _drift_or_noop(
    d: DesiredResource,
    o: Observed,
    after: dict[str, Any],
    new_hash: str,
    inputs: PlanInputs,
    space: tuple[str, ...],
    findings: list[Finding],
) -> Change:
    if o.drift is None:
        reasons = (f"{o.lifecycle} (lifecycle, not drift)",) if o.lifecycle else ()
        return _kept(d, o, after, new_hash, reasons, None)
    policy = inputs.desired.config.policy
    if policy.drift != "correct":
        return _kept(
            d, o, after, new_hash, (f"drift: {o.drift}; policy.drift={policy.drift}",), o.drift
        )
    return Change(
        address=d.address,
        kind=d.kind,
        action=Action.UPDATE,
        before=o.spec,
        after=after,
        reasons=(f"drift: {o.drift}; correcting to the declared spec",),
        placement=o.placement,
        cost_before=_observed_cost(o),
        cost_after=_running_cost(d, o.placement),
        spec_hash=new_hash,
        depends_on=d.skyform.depends_on,
        file=d.file,
        drift=o.drift,
    )


def _kept(
    d: DesiredResource,
    o: Observed,
    after: dict[str, Any],
    new_hash: str,
    reasons: tuple[str, ...],
    drift: str | None,
) -> Change:
    cost = _observed_cost(o)
    return Change(
        address=d.address,
        kind=d.kind,
        action=Action.NOOP,
        before=o.spec,
        after=after,
        reasons=reasons,
        placement=o.placement,
        cost_before=cost,
        cost_after=cost,
        spec_hash=o.spec_hash if new_hash == o.spec_hash else new_hash,
        depends_on=d.skyform.depends_on,
        file=d.file,
        drift=drift,
    )


def _observed_cost(o: Observed) -> float:
    if o.status in FINISHED or o.status == MISSING or o.status == "STOPPED":
        return 0.0
    return round(o.hourly_cost, 6)


def _orphan(o: Observed, prune: bool) -> Change:
    if not prune:
        return Change(
            address=o.address,
            kind=o.kind,
            action=Action.NOOP,
            before=o.spec,
            after=None,
            reasons=("no longer declared; kept because policy.prune is off",),
            placement=o.placement,
            cost_before=_observed_cost(o),
            cost_after=_observed_cost(o),
            spec_hash=o.spec_hash,
        )
    return Change(
        address=o.address,
        kind=o.kind,
        action=Action.DELETE,
        before=o.spec,
        after=None,
        reasons=("no longer declared in the repo",),
        placement=o.placement,
        cost_before=_observed_cost(o),
        spec_hash=o.spec_hash,
        depends_on=o.depends_on,
        interrupts=_interrupts(o, Action.DELETE),
    )


def _interrupts(o: Observed, action: Action) -> str | None:
    verb = "replaces" if action == Action.REPLACE else "deletes"
    if o.kind == "job" and o.status in RUNNING:
        return f"cancels running {o.address} ({o.status.lower()})"
    if o.kind == "cluster" and o.status in RUNNING:
        return f"{verb} running {o.address}"
    if o.kind == "service" and action == Action.DELETE and (o.ready_replicas or 0) > 0:
        return f"takes {o.address} down ({o.ready_replicas} ready replicas)"
    return None


def _scale_down(d: DesiredResource, o: Observed) -> str | None:
    if d.kind != "service" or o.ready_replicas is None:
        return None
    target = _replicas(d)
    if target < o.ready_replicas:
        return f"scales {d.address} from {o.ready_replicas} to {target} ready replicas"
    return None


def _required_inputs(
    desired: Mapping[str, DesiredResource], scope: list[str], findings: list[Finding]
) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for address in scope:
        d = desired.get(address)
        if d is None:
            continue
        for env in d.required_envs:
            names[env] = None
            findings.append(
                Finding(
                    "error",
                    f"env {env} has no value ({d.file}); pass --env {env}=VALUE "
                    f"or set {env} in the environment",
                    address,
                )
            )
    return tuple(names)


def _summary(changes: list[Change]) -> Summary:
    counts = {a: 0 for a in Action}
    orphaned = 0
    for c in changes:
        counts[c.action] += 1
        if c.action == Action.NOOP and c.after is None:
            orphaned += 1
    return Summary(
        create=counts[Action.CREATE],
        update=counts[Action.UPDATE],
        replace=counts[Action.REPLACE],
        delete=counts[Action.DELETE],
        noop=counts[Action.NOOP],
        orphaned=orphaned,
        interrupts=tuple(c.interrupts for c in changes if c.interrupts),
    )
