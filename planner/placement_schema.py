"""Adaptor from schema models (Resources, Task) to optimizer requests; a per-task entry point."""

from __future__ import annotations

from collections.abc import Sequence

from planner.catalog import Catalog
from planner.optimizer import optimize
from planner.placement_types import (
    Amount,
    Blocked,
    LiveOffering,
    PlacementResult,
    Request,
    Target,
)
from schema.resources import Resources
from schema.task import Task
from schema.values import Quantity


def _amount(q: Quantity | None) -> Amount | None:
    if q is None:
        return None
    return Amount(q.value, at_least=q.at_least, per_cpu=q.per_cpu)


def request_from_resources(res: Resources) -> Request:
    """One flat candidate (from `Resources.choices()`) as an optimizer request."""
    infra = res.infra
    acc = res.accelerator
    args = res.accelerator_args or {}
    return Request(
        cloud=infra.cloud if infra else None,
        region=infra.region if infra else None,
        zone=infra.zone if infra else None,
        accelerator=acc.name if acc else None,
        accelerator_count=acc.count if acc else 1.0,
        cpus=_amount(res.cpus),
        memory=_amount(res.memory),
        instance_type=res.instance_type,
        use_spot=bool(res.use_spot),
        max_hourly_cost=res.max_hourly_cost,
        tpu_vm=bool(args.get("tpu_vm", True)),
    )


def task_requests(task: Task) -> tuple[bool, tuple[Request, ...]]:
    """(is_ordered, requests) for a task's resources."""
    ordered, choices = task.resources.choices()
    return ordered, tuple(request_from_resources(c) for c in choices)


def optimize_task(
    task: Task,
    search_space: Sequence[str | Target],
    catalog: Catalog,
    *,
    offerings: Sequence[LiveOffering] = (),
    blocked: Sequence[Blocked] = (),
) -> PlacementResult:
    ordered, requests = task_requests(task)
    return optimize(
        requests,
        task.num_nodes,
        search_space,
        catalog,
        ordered=ordered,
        offerings=offerings,
        blocked=blocked,
    )
