"""The Plan: pure data with an Action per resource, a versioned JSON form, nothing about display.

Renderers (text, markdown) work from this data; `to_json`/`from_json` are the contract that
saved plans, CI and the applier share. Secrets never enter a Plan.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

FORMAT_VERSION = "1.0"
SENSITIVE = "(sensitive value)"
KNOWN_AFTER_APPLY = "(known after apply)"


class Action(StrEnum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs; `forces_replacement` names why an update becomes a replace."""

    path: str
    before: Any
    after: Any
    forces_replacement: bool = False


@dataclass(frozen=True)
class PlacementView:
    """Where a resource runs (or would run) and what it costs per hour, all nodes together."""

    cloud: str
    region: str | None
    zone: str | None
    instance_type: str
    accelerators: dict[str, float] | None
    use_spot: bool
    num_nodes: int
    hourly_cost: float
    vcpus: float | None = None  # per node
    memory_gib: float | None = None  # per node

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


@dataclass(frozen=True)
class Change:
    address: str
    kind: str
    action: Action
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    diffs: tuple[FieldDiff, ...] = ()
    reasons: tuple[str, ...] = ()
    placement: PlacementView | None = None
    failover: tuple[PlacementView, ...] = ()
    cost_before: float = 0.0
    cost_after: float = 0.0
    spec_hash: str | None = None
    depends_on: tuple[str, ...] = ()
    file: str | None = None
    drift: str | None = None
    interrupts: str | None = None  # running work this change stops, said in the summary


@dataclass(frozen=True)
class Finding:
    """A policy or feasibility problem; any error makes the plan unappliable."""

    severity: str  # "error" | "warning"
    message: str
    address: str | None = None


@dataclass(frozen=True)
class Summary:
    create: int = 0
    update: int = 0
    replace: int = 0
    delete: int = 0
    noop: int = 0
    orphaned: int = 0
    interrupts: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.create or self.update or self.replace or self.delete)


@dataclass(frozen=True)
class Cost:
    now: float
    after: float

    @property
    def delta(self) -> float:
        return round(self.after - self.now, 6)


@dataclass(frozen=True)
class Plan:
    repo_path: str
    repo_commit: str | None
    lineage: str | None
    serial: int
    changes: tuple[Change, ...]
    order: tuple[str, ...]
    summary: Summary
    cost: Cost
    findings: tuple[Finding, ...] = ()
    targets: tuple[str, ...] = ()
    format_version: str = FORMAT_VERSION
    required_inputs: tuple[str, ...] = field(default=())

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    def change(self, address: str) -> Change:
        for c in self.changes:
            if c.address == address:
                return c
        raise KeyError(address)


def _round(value: float) -> float:
    return round(value, 6)


def to_dict(plan: Plan) -> dict[str, Any]:
    doc = asdict(plan)
    doc["summary"]["changes"] = plan.summary.changes
    doc["cost"] = {
        "now": _round(plan.cost.now),
        "after": _round(plan.cost.after),
        "delta": plan.cost.delta,
    }
    for change in doc["changes"]:
        change["action"] = Action(change["action"]).value
        change["cost_before"] = _round(change["cost_before"])
        change["cost_after"] = _round(change["cost_after"])
    return doc


def to_json(plan: Plan) -> str:
    """Deterministic JSON: the same plan always gives the same bytes."""
    return json.dumps(to_dict(plan), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class PlanFormatError(ValueError):
    pass


def _placement(d: dict[str, Any] | None) -> PlacementView | None:
    return None if d is None else PlacementView(**d)


def from_dict(doc: dict[str, Any]) -> Plan:
    version = str(doc.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise PlanFormatError(
            f"plan format {version or 'unknown'} is not supported (this Skyform reads "
            f"{FORMAT_VERSION}); re-run `skyform plan` with this version"
        )
    try:
        changes = tuple(
            Change(
                **{
                    **c,
                    "action": Action(c["action"]),
                    "diffs": tuple(FieldDiff(**d) for d in c["diffs"]),
                    "reasons": tuple(c["reasons"]),
                    "placement": _placement(c["placement"]),
                    "failover": tuple(PlacementView(**p) for p in c["failover"]),
                    "depends_on": tuple(c["depends_on"]),
                }
            )
            for c in doc["changes"]
        )
        summary = dict(doc["summary"])
        summary.pop("changes", None)
        summary["interrupts"] = tuple(summary.get("interrupts", ()))
        return Plan(
            repo_path=doc["repo_path"],
            repo_commit=doc["repo_commit"],
            lineage=doc["lineage"],
            serial=int(doc["serial"]),
            changes=changes,
            order=tuple(doc["order"]),
            summary=Summary(**summary),
            cost=Cost(now=doc["cost"]["now"], after=doc["cost"]["after"]),
            findings=tuple(Finding(**f) for f in doc["findings"]),
            targets=tuple(doc.get("targets", ())),
            format_version=version,
            required_inputs=tuple(doc.get("required_inputs", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFormatError(f"not a Skyform plan file: {exc}") from exc


def from_json(text: str) -> Plan:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFormatError(f"not a Skyform plan file: {exc}") from exc
    if not isinstance(doc, dict):
        raise PlanFormatError("not a Skyform plan file: expected a JSON object")
    return from_dict(doc)
