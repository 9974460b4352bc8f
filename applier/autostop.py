"""Autostop: a cluster idle for longer than its `autostop` minutes is stopped (or torn down
with `down: true`), as SkyPilot's skylet does on the cluster itself. The daemon calls this on
each drift tick; activity is the provider's `last_active` (launch, run, start, interactive use),
and, as for SkyPilot's skylet, a cluster whose run is still going is busy however long ago it
started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from applier.provider import JobState, ObservedResource, Provider, ResourceKind, ResourceStatus
from schema.errors import SkyformError

BUSY = frozenset({JobState.SETTING_UP, JobState.RUNNING})


@dataclass(frozen=True)
class Stopped:
    address: str
    down: bool
    idle_minutes: float


def enforce(providers: Mapping[str, Provider], now: float) -> list[Stopped]:
    """Stop (or terminate) every idle cluster; one observe() per provider."""
    done: list[Stopped] = []
    for provider in providers.values():
        for res in provider.observe():
            minutes = res.autostop_minutes
            if res.handle.kind != ResourceKind.CLUSTER or minutes is None:
                continue
            if res.status != ResourceStatus.UP:
                continue
            idle = (now - res.last_active) / 60.0
            if idle < minutes or _busy(provider, res):
                continue
            action: Callable[..., object] = (
                provider.terminate if res.autostop_down else provider.stop
            )
            action(res.handle)
            done.append(Stopped(res.handle.address, res.autostop_down, round(idle, 1)))
    return done


def _busy(provider: Provider, res: ObservedResource) -> bool:
    """Whether the cluster's run still goes. A listing may carry a run state that is only as
    fresh as the last look at the nodes (cloud nodes' logs are mirrored when Skyform checks
    the job), so a run that looks busy is checked once more before it keeps a cluster up."""
    if res.job not in BUSY:
        return False
    try:
        return provider.job_status(res.handle) in BUSY
    except SkyformError:
        return True  # cannot tell now: stopping a cluster mid-run is the worse mistake
