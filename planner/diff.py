"""Desired x observed x catalog -> Plan: the pairing of declared resources with live ones.

A declared resource with no live counterpart is created, a live one with no declaration is
deleted (when the policy prunes), and a pair is compared field by field. Pure: same inputs,
same plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
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


# A placement choice and its failover order.
_Placed = tuple[PlacementView | None, tuple[PlacementView, ...]]


def make_plan(inputs: PlanInputs) -> Plan:
    desired = inputs.desired.resources
    observed = inputs.observed
    space = inputs.search_space or tuple(str(e.infra) for e in inputs.desired.config.infra)
    run = _Run(inputs, space)
    addresses = sorted(set(desired) | set(observed))
    if inputs.targets:
        scope = with_dependencies(inputs.targets, desired, observed)
        unknown = [t for t in inputs.targets if t not in desired and t not in observed]
        run.findings.extend(Finding("error", f"--target {t}: no such resource") for t in unknown)
        addresses = [a for a in addresses if a in scope]
    changes: list[Change] = []
    for address in addresses:
        d, o = desired.get(address), observed.get(address)
        if d is not None and o is None:
            change = run.create(d)
        elif d is not None and o is not None:
            change = run.compare(d, o)
        else:
            assert o is not None
            change = _orphan(o, inputs.desired.config.policy.prune)
        changes.append(change)
    findings = run.findings
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


@dataclass
class _Run:
    """One make_plan call: its inputs and search space, the findings so far, and the
    optimizer's answers, which live exactly as long as the call."""

    inputs: PlanInputs
    space: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list, init=False)
    _placements: dict[tuple[str, int], PlacementResult] = field(default_factory=dict, init=False)

    def place(self, d: DesiredResource) -> _Placed:
        """The choice and the failover order. A pipeline's stages are placed one by one; the
        plan shows the costliest stage, since a pipeline runs one stage at a time."""
        best: _Placed = (None, ())
        for stage in d.source.tasks:
            result = self.optimize(stage.task)
            if result.choice is None:
                label = f" (stage {stage.task.name})" if d.source.is_pipeline else ""
                self.findings.append(
                    Finding("error", f"no feasible placement{label}: {result.reason}", d.address)
                )
                return None, ()
            views = tuple(view(p) for p in result.candidates[: 1 + FAILOVER_SHOWN])
            if best[0] is None or views[0].hourly_cost > best[0].hourly_cost:
                best = (views[0], views[1 : 1 + FAILOVER_SHOWN])
        return best

    def optimize(self, task: Task) -> PlacementResult:
        # Repos repeat the same resource shapes; the optimizer is pure, so one answer per shape.
        key = (task.resources.model_dump_json(), task.num_nodes)
        result = self._placements.get(key)
        if result is None:
            inputs = self.inputs
            result = self._placements[key] = optimize_task(
                task, self.space, inputs.catalog, offerings=inputs.offerings, blocked=inputs.blocked
            )
        return result

    def create(
        self, d: DesiredResource, *, reasons: tuple[str, ...] = (), drift: str | None = None
    ) -> Change:
        placed = self.place(d)
        after = spec_of(d)
        return _change(
            Action.CREATE,
            d,
            None,
            after=after,
            new_hash=spec_hash(d, after),
            placed=placed,
            reasons=reasons,
            drift=drift,
        )

    def compare(self, d: DesiredResource, o: Observed) -> Change:
        policy = self.inputs.desired.config.policy
        after = spec_of(d)
        new_hash = spec_hash(d, after)
        change = partial(_change, d=d, o=o, after=after, new_hash=new_hash)
        if o.status == MISSING:
            why = o.drift or "deleted outside Skyform"
            if policy.drift == "correct":
                return self.create(d, reasons=(f"drift: {why}; recreating",), drift=why)
            reasons = (f"drift: {why}; policy.drift={policy.drift}",)
            return change(Action.NOOP, reasons=reasons, drift=why)
        diffs = _field_diffs(d.kind, o.spec, after, d.skyform.ignore_changes)
        if not diffs and (o.spec_hash == new_hash or not d.skyform.ignore_changes):
            if o.spec_hash != new_hash:
                diffs = (
                    FieldDiff("secrets", "(sensitive value)", "(sensitive value)", d.kind == "job"),
                )
            elif o.drift is None:
                lifecycle = (f"{o.lifecycle} (lifecycle, not drift)",) if o.lifecycle else ()
                return change(Action.NOOP, reasons=lifecycle)
            elif policy.drift != "correct":
                reasons = (f"drift: {o.drift}; policy.drift={policy.drift}",)
                return change(Action.NOOP, reasons=reasons, drift=o.drift)
            else:
                reasons = (f"drift: {o.drift}; correcting to the declared spec",)
                return change(Action.UPDATE, reasons=reasons, drift=o.drift)
        if not diffs:
            return change(Action.NOOP, reasons=("only ignored fields changed",))
        if d.kind != "job" and not any(x.forces_replacement for x in diffs):
            return change(Action.UPDATE, diffs=diffs, interrupts=_scale_down(d, o))
        placed = self.place(d)
        forced = [x.path for x in diffs if x.forces_replacement]
        changed = ", ".join(x.path for x in diffs)
        reason = (
            f"a job is immutable: {changed} changed, so it re-runs"
            if d.kind == "job"
            else f"{', '.join(forced)} forces replacement"
        )
        return change(
            Action.REPLACE,
            placed=placed,
            diffs=diffs,
            reasons=(reason,),
            interrupts=_interrupts(o, Action.REPLACE),
        )


def _change(
    action: Action,
    d: DesiredResource | None,
    o: Observed | None,
    *,
    after: dict[str, Any] | None = None,
    new_hash: str | None = None,
    placed: _Placed | None = None,
    diffs: tuple[FieldDiff, ...] = (),
    reasons: tuple[str, ...] = (),
    depends_on: tuple[str, ...] | None = None,
    drift: str | None = None,
    interrupts: str | None = None,
) -> Change:
    """One Change; the fields every case fills the same way are filled here.

    Address, kind, dependencies and file come from the declaration `d` (`after` and `new_hash`
    are its spec and hash), or for an orphan from the live record `o`, which also gives the
    spec and cost before. The resource runs where `placed` puts it, else where `o` runs now.
    A no-op keeps the cost it has, a delete costs nothing after, anything else costs what the
    declaration costs at its placement.
    """
    placement, failover = placed if placed is not None else (None if o is None else o.placement, ())
    cost_before = 0.0 if o is None else _observed_cost(o)
    if action == Action.NOOP:
        cost_after = cost_before
    elif action == Action.DELETE:
        cost_after = 0.0
    else:
        assert d is not None
        cost_after = _running_cost(d, placement)
    kind: str
    if d is not None:
        address, kind, file = d.address, d.kind, d.file
        deps = d.skyform.depends_on if depends_on is None else depends_on
    else:
        assert o is not None
        address, kind, file, new_hash = o.address, o.kind, None, o.spec_hash
        deps = depends_on or ()
    return Change(
        address=address,
        kind=kind,
        action=action,
        before=None if o is None else o.spec,
        after=after,
        diffs=diffs,
        reasons=reasons,
        placement=placement,
        failover=failover,
        cost_before=cost_before,
        cost_after=cost_after,
        spec_hash=new_hash,
        depends_on=deps,
        file=file,
        drift=drift,
        interrupts=interrupts,
    )


def _running_cost(d: DesiredResource, placement: PlacementView | None) -> float:
    if placement is None:
        return 0.0
    return round(placement.hourly_cost * (_replicas(d) if d.kind == "service" else 1), 6)


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


def _observed_cost(o: Observed) -> float:
    if o.status in FINISHED or o.status == MISSING or o.status == "STOPPED":
        return 0.0
    return round(o.hourly_cost, 6)


def _orphan(o: Observed, prune: bool) -> Change:
    if not prune:
        reasons = ("no longer declared; kept because policy.prune is off",)
        return _change(Action.NOOP, None, o, reasons=reasons)
    return _change(
        Action.DELETE,
        None,
        o,
        reasons=("no longer declared in the repo",),
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
