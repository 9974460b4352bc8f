"""Gathering a plan's inputs from the world: env values, the repo, its commit, the state store,
live local capacity and the catalog. The planner itself never does any of this I/O.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from applier.provider import Provider
from applier.providers import registry
from applier.refresh import Live, call_each
from applier.refresh import refresh as refresh_live
from planner.catalog import Catalog, load_shipped_catalog
from planner.diff import Observed, PlanInputs, make_plan
from planner.placement_types import Blocked, LiveOffering
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


def provider_settings(desired: DesiredState | None) -> dict[str, Any]:
    """Each provider's settings from skyform.yaml's search space: local caps; Kubernetes
    contexts with namespace and pricing; cloud regions and zones."""
    settings: dict[str, Any] = {}
    for entry in desired.config.infra if desired is not None else ():
        cloud = entry.infra.cloud or ""
        mine = settings.setdefault(cloud, {})
        if cloud == "local" and entry.caps is not None:
            caps = entry.caps
            mine["caps"] = {"cpus": caps.cpus, "memory_gib": caps.memory, "gpus": caps.gpus}
        elif cloud == "kubernetes":
            mine.setdefault("contexts", []).append(
                {
                    "context": entry.infra.region,
                    "namespace": entry.namespace,
                    "pricing": entry.pricing.model_dump() if entry.pricing else None,
                    "queue": entry.queue,
                    "image": entry.image,
                    "schedule_timeout_s": entry.schedule_timeout,
                }
            )
        elif entry.infra.region:
            mine.setdefault("regions", []).append(entry.infra.region)
    return settings


def search_clouds(desired: DesiredState | None) -> list[str]:
    clouds = [e.infra.cloud for e in desired.config.infra] if desired is not None else []
    return [c for c in dict.fromkeys(["local", *clouds]) if c]


def providers(desired: DesiredState | None) -> dict[str, Provider]:
    """The usable providers of the repo's search space (this machine always)."""
    usable, _ = registry.available(
        search_clouds(desired), skyform_home(), provider_settings(desired)
    )
    return usable


def live_offerings(
    provs: Mapping[str, Provider], timeout_s: float | None = None
) -> list[LiveOffering]:
    """Free capacity as the providers see it now (what Skyform already runs is subtracted).

    The providers are asked at once, each bounded by `timeout_s` (refresh's default): one that
    errs or does not answer in time offers no live capacity, so nothing is placed on a guess.
    """
    out = []
    answers = call_each(provs, lambda _, p: p.capacity(), timeout_s)
    for name in [n for n in provs if n in answers]:
        for free in answers[name]:
            out.append(
                LiveOffering(
                    cloud=free.cloud,
                    region=free.region,
                    cpus=free.cpus,
                    memory_gib=free.memory_gib,
                    accelerator=free.accelerator,
                    accelerator_count=free.accelerator_count,
                    hourly_price=free.hourly_price,
                    nodes=free.nodes,
                )
            )
    return out


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


def observed_from(
    records: list[Resource], live: Mapping[str, Live] | None = None
) -> dict[str, Observed]:
    """State records, overlaid with what a refresh found live (status, drift, replicas)."""
    out: dict[str, Observed] = {}
    for r in records:
        placement = PlacementView(**r.placement) if r.placement else None
        spec = dict(r.spec)
        deps = tuple(spec.pop("skyform.depends_on", ()))
        seen = (live or {}).get(r.address)
        out[r.address] = Observed(
            address=r.address,
            kind=r.kind,
            spec=spec,
            spec_hash=r.spec_hash,
            status=seen.status if seen else r.status,
            placement=placement,
            hourly_cost=placement.hourly_cost if placement else 0.0,
            drift=seen.drift if seen else None,
            lifecycle=seen.lifecycle if seen else None,
            depends_on=deps,
            ready_replicas=seen.ready_replicas if seen else None,
        )
    return out


def build_plan(
    desired: DesiredState,
    store: Store,
    *,
    commit: str | None,
    targets: tuple[str, ...] = (),
    catalog: Catalog | None = None,
    refresh: bool = True,
    provs: Mapping[str, Provider] | None = None,
    observe_timeout_s: float | None = None,
) -> Plan:
    meta = store.meta()
    provs = providers(desired) if provs is None else provs
    records = store.list_resources()
    live = refresh_live(records, provs, observe_timeout_s) if refresh else None
    blocked = [
        Blocked(
            cloud=b.placement.infra,
            region=b.placement.region,
            zone=b.placement.zone,
            instance_type=b.placement.instance_type,
            use_spot=b.placement.use_spot,
        )
        for b in store.list_blocked()
    ]
    inputs = PlanInputs(
        desired=desired,
        observed=observed_from(records, live),
        catalog=catalog or load_shipped_catalog(),
        offerings=live_offerings(provs, observe_timeout_s) if provs else local_offerings(),
        blocked=blocked,
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
