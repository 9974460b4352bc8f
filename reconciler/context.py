"""Gathering a plan's inputs from the world: env values, the repo, its commit, the state store,
live local capacity and the catalog. The planner itself never does any of this I/O.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from planner.catalog import Catalog, load_shipped_catalog
from planner.diff import Observed, PlanInputs, make_plan
from planner.placement_types import LiveOffering
from planner.plan import PlacementView, Plan
from schema.errors import SpecError
from schema.repo import DesiredState, load_repo
from state import Resource, Store, open_store


def skyform_home() -> Path:
    return Path(os.environ.get("SKYFORM_HOME") or Path.home() / ".skyform").expanduser()


def load_desired(path: Path, cli_env: Mapping[str, str]) -> DesiredState:
    """Load the repo; envs declared without a value are filled from --env, then from the
    process environment (as `sky launch --env NAME` does), and otherwise stay required."""
    state = load_repo(path, cli_env)
    missing = {e for r in state.resources.values() for e in r.required_envs}
    from_environ = {name: os.environ[name] for name in missing if name in os.environ}
    if from_environ:
        state = load_repo(path, {**from_environ, **cli_env})
    return state


def state_url(cli_url: str | None, desired: DesiredState | None) -> str | None:
    if cli_url:
        return cli_url
    if os.environ.get("SKYFORM_STATE"):
        return os.environ["SKYFORM_STATE"]
    return desired.config.state if desired is not None else None


def open_state(cli_url: str | None, desired: DesiredState | None) -> Store:
    return open_store(state_url(cli_url, desired), skyform_home())


def repo_commit(path: Path) -> str | None:
    """The checked-out commit when the repo is a git work tree with a clean state, else None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def local_offerings() -> list[LiveOffering]:
    """This machine as one node of free capacity (the local provider refines it when it runs)."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    memory = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) / 1024 / 1024
    except OSError:
        memory = 1.0
    return [LiveOffering(cloud="local", region=None, cpus=cpus, memory_gib=memory)]


def observed_from(records: list[Resource]) -> dict[str, Observed]:
    out: dict[str, Observed] = {}
    for r in records:
        placement = PlacementView(**r.placement) if r.placement else None
        deps = tuple(r.spec.get("skyform.depends_on", ())) if isinstance(r.spec, dict) else ()
        out[r.address] = Observed(
            address=r.address,
            kind=r.kind,
            spec=dict(r.spec),
            spec_hash=r.spec_hash,
            status=r.status,
            placement=placement,
            hourly_cost=placement.hourly_cost if placement else 0.0,
            depends_on=deps,
        )
    return out


def build_plan(
    desired: DesiredState,
    store: Store,
    *,
    commit: str | None,
    targets: tuple[str, ...] = (),
    catalog: Catalog | None = None,
    observed: Mapping[str, Observed] | None = None,
) -> Plan:
    meta = store.meta()
    inputs = PlanInputs(
        desired=desired,
        observed=observed if observed is not None else observed_from(store.list_resources()),
        catalog=catalog or load_shipped_catalog(),
        offerings=local_offerings(),
        lineage=meta.lineage,
        serial=meta.serial,
        commit=commit,
        targets=targets,
    )
    return make_plan(inputs)


__all__ = [
    "SpecError",
    "build_plan",
    "load_desired",
    "local_offerings",
    "observed_from",
    "open_state",
    "repo_commit",
    "skyform_home",
]
