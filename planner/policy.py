"""Policy checks on a plan: cost ceiling, protected resources, allowed infra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from planner.plan import Action, Change, Finding
from schema.repo import DesiredState


def _protected(change: Change, desired: DesiredState, observed: Mapping[str, Any]) -> bool:
    if change.address in desired.config.policy.protect:
        return True
    d = desired.resources.get(change.address)
    if d is not None and d.skyform.protect:
        return True
    o = observed.get(change.address)
    return bool(o is not None and o.spec.get("skyform.protect"))


def check_policies(
    desired: DesiredState, changes: Sequence[Change], observed: Mapping[str, Any]
) -> list[Finding]:
    out: list[Finding] = []
    policy = desired.config.policy
    for c in changes:
        if c.action in (Action.DELETE, Action.REPLACE) and _protected(c, desired, observed):
            verb = "delete" if c.action == Action.DELETE else "replace"
            why = f" ({c.reasons[0]})" if c.reasons else ""
            out.append(
                Finding(
                    "error",
                    f"{c.address} is protected and cannot be {verb}d{why}; remove 'protect' "
                    "(skyform: block or policy.protect) first if this is intended",
                    c.address,
                )
            )
    total = sum(c.cost_after for c in changes)
    if policy.max_hourly_cost is not None and total > policy.max_hourly_cost + 1e-9:
        top = sorted(changes, key=lambda c: -c.cost_after)[:3]
        biggest = ", ".join(f"{c.address} ${c.cost_after:.2f}/h" for c in top if c.cost_after)
        out.append(
            Finding(
                "error",
                f"the plan costs ${total:.2f}/h after apply, over policy.max_hourly_cost "
                f"${policy.max_hourly_cost:.2f}/h (largest: {biggest})",
            )
        )
    return out
