"""Autostop on the local provider with real processes: idle clusters stop, busy ones do not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from applier.autostop import enforce
from applier.provider import JobState, LaunchRequest, Placement, ResourceKind, ResourceStatus
from applier.providers.local import LocalProvider
from schema.loader import load_tasks


def _cluster(
    provider: LocalProvider, name: str, autostop: str, tmp_path: Path, run: str = "echo up"
) -> None:
    text = f"resources: {{cpus: 0.1, memory: 0.1, autostop: {autostop}}}\nrun: {run}\n"
    task = load_tasks(text, f"{name}.yaml").tasks[0].task
    provider.launch(
        LaunchRequest(
            address=f"cluster.{name}",
            skyform_id=f"{name}-0123456789",
            kind=ResourceKind.CLUSTER,
            task=task,
            placement=Placement("local", cpus=0.1, memory_gib=0.1),
            base_dir=tmp_path,
        )
    )


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    """The local provider in its own home; whatever a test left running is terminated."""
    local = LocalProvider(tmp_path / "home", grace_s=0.5)
    yield local
    for o in local.observe():
        local.terminate(o.handle)


def _wait_runs_ended(provider: LocalProvider, *names: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _runs_ended(provider, *names):
        time.sleep(0.1)


def _runs_ended(provider: LocalProvider, *names: str) -> bool:
    jobs = {o.handle.address: o.job for o in provider.observe()}
    return all(jobs[f"cluster.{n}"] == JobState.SUCCEEDED for n in names)


def test_idle_clusters_stop_or_go_down(provider: LocalProvider, tmp_path: Path) -> None:
    _cluster(provider, "idle", "1", tmp_path)
    _cluster(provider, "gone", "{idle_minutes: 1, down: true}", tmp_path)
    _cluster(provider, "busy", "30", tmp_path)
    # Launched as long ago as the others, but its run is still going: busy, as in SkyPilot.
    _cluster(provider, "training", "1", tmp_path, run="sleep 120")
    assert enforce({"local": provider}, time.time()) == []  # nobody idle yet
    _wait_runs_ended(provider, "idle", "gone", "busy")
    later = time.time() + 5 * 60
    stopped = enforce({"local": provider}, later)
    assert sorted((s.address, s.down) for s in stopped) == [
        ("cluster.gone", True),
        ("cluster.idle", False),
    ]
    states = {o.handle.address: o.status for o in provider.observe()}
    assert states == {
        "cluster.idle": ResourceStatus.STOPPED,
        "cluster.busy": ResourceStatus.UP,
        "cluster.training": ResourceStatus.UP,
    }
    assert enforce({"local": provider}, later) == []  # stopped clusters are left alone


def test_an_autostop_changed_on_a_running_cluster_takes_effect(
    provider: LocalProvider, tmp_path: Path
) -> None:
    _cluster(provider, "dev", "30", tmp_path)
    (before,) = provider.observe()
    assert (before.autostop_minutes, before.autostop_down) == (30, False)
    # `skyform apply` of an edited file relaunches with the same id: the nodes are adopted.
    _cluster(provider, "dev", "{idle_minutes: 2, down: true}", tmp_path)
    (after,) = provider.observe()
    assert after.handle.resource_id == before.handle.resource_id
    assert (after.autostop_minutes, after.autostop_down) == (2, True)
    _wait_runs_ended(provider, "dev")
    assert [s.address for s in enforce({"local": provider}, time.time() + 5 * 60)] == [
        "cluster.dev"
    ]
    assert provider.observe() == []  # down: torn down, not stopped


def test_removing_autostop_from_a_running_cluster_turns_it_off(
    provider: LocalProvider, tmp_path: Path
) -> None:
    _cluster(provider, "dev", "1", tmp_path)
    _cluster(provider, "dev", "false", tmp_path)
    (after,) = provider.observe()
    assert after.autostop_minutes is None
    assert enforce({"local": provider}, time.time() + 60 * 60) == []
