"""Building plan inputs for tests: repos on disk, a fixed local machine, observed records."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from planner.catalog import Catalog, load_shipped_catalog
from planner.diff import Observed, PlanInputs, make_plan
from planner.placement_types import LiveOffering
from planner.plan import Action, Plan
from schema.repo import load_repo

# A fixed "this machine", so plans do not depend on where the tests run.
MACHINE = (LiveOffering(cloud="local", region=None, cpus=8.0, memory_gib=32.0),)


@cache
def catalog() -> Catalog:
    return load_shipped_catalog(["aws", "gcp"])


def write_repo(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def plan_repo(
    root: Path,
    observed: dict[str, Observed] | None = None,
    *,
    env: dict[str, str] | None = None,
    targets: tuple[str, ...] = (),
    serial: int = 7,
) -> Plan:
    desired = load_repo(root, env)
    return make_plan(
        PlanInputs(
            desired=desired,
            observed=observed or {},
            catalog=catalog(),
            offerings=MACHINE,
            lineage="0f8e4f6c-lineage",
            serial=serial,
            commit="3a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
            targets=targets,
        )
    )


def applied(
    plan: Plan, status: str = "RUNNING", changes: dict[str, dict[str, object]] | None = None
) -> dict[str, Observed]:
    """What the state store holds after `plan` was applied: the spec, hash and placement."""
    out: dict[str, Observed] = {}
    for c in plan.changes:
        if c.action in (Action.DELETE,) or c.after is None or c.spec_hash is None:
            continue
        fields: dict[str, object] = {
            "address": c.address,
            "kind": c.kind,
            "spec": c.after,
            "spec_hash": c.spec_hash,
            "status": status,
            "placement": c.placement,
            "hourly_cost": c.cost_after,
            "depends_on": c.depends_on,
        }
        fields.update((changes or {}).get(c.address, {}))
        out[c.address] = Observed(**fields)  # type: ignore[arg-type]
    return out
