"""One conformance suite for the `Provider` protocol, run against every implementation (local,
fake, and aws and gcp over their fake clouds, `tests.cloud_support`): what plan execution and
the managed-job layer rely on, whichever provider is behind them. The capacity-accounting tests
leave the clouds out: they are sized by the catalog, not by a count.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from applier.provider import (
    FreeCapacity,
    Handle,
    JobState,
    LaunchRequest,
    Placement,
    Provider,
    ResourceKind,
    ResourceStatus,
    Selector,
)
from applier.providers.fake import FakeProvider
from applier.providers.local import LocalProvider
from applier.providers.local_machine import LocalCaps
from applier.providers.local_node import read_json
from schema.errors import CapacityError, ProviderError
from schema.loader import load_tasks
from schema.task import Task
from tests.cloud_support.fixtures import aws, client_key, fake_ec2, fake_gce, gcp, sshd  # noqa: F401
from tests.cloud_support.worlds import World
from tests.waiting import wait_for


def task(yaml: str) -> Task:
    return load_tasks(yaml, "test.yaml").tasks[0].task


@dataclass
class Harness:
    provider: Provider
    cloud: str
    kill_node: Callable[[Handle], None]  # a node dies outside Skyform (kill -9 / node lost)
    at: Placement | None = None  # where every request goes (a cloud's); None: sized by the test
    leftovers: Callable[[], list[Any]] = list  # what is still billed once all is terminated

    def placement(self, cpus: float = 0.1, memory_gib: float = 0.1) -> Placement:
        return self.at or Placement(cloud=self.cloud, cpus=cpus, memory_gib=memory_gib)

    def request(
        self,
        yaml: str,
        address: str = "job.t",
        kind: ResourceKind = ResourceKind.JOB,
        skyform_id: str | None = None,
        cpus: float = 0.1,
    ) -> LaunchRequest:
        return LaunchRequest(
            address=address,
            skyform_id=skyform_id or str(uuid.uuid4()),
            kind=kind,
            task=task(yaml),
            placement=self.placement(cpus=cpus),
        )


def _local(request: pytest.FixtureRequest, home: Path, caps: LocalCaps | None) -> Harness:
    provider = LocalProvider(home, caps=caps, grace_s=1.0)

    def kill(handle: Handle) -> None:
        pid = read_json(home / "local" / handle.resource_id / "node-0" / "state" / "pid.json")
        assert pid is not None
        os.killpg(int(pid["pgid"]), signal.SIGKILL)

    return Harness(provider, "local", kill)


def _fake(request: pytest.FixtureRequest, home: Path, caps: LocalCaps | None) -> Harness:
    capacity = []
    if caps is not None:
        capacity = [FreeCapacity("fake", "fake", None, caps.cpus or 64.0, 64.0)]
    provider = FakeProvider(capacity=capacity, log_dir=home / "logs")
    return Harness(provider, "fake", lambda h: provider.lose_node(h, 0))


def _cloud(request: pytest.FixtureRequest, home: Path, caps: LocalCaps | None) -> Harness:
    world: World = request.getfixturevalue(request.param)  # the `aws` or `gcp` fixture
    return Harness(world.provider(home), world.name, world.kill, world.placement, world.live)


CLOUDS = ("aws", "gcp")
FACTORIES = {"local": _local, "fake": _fake, **dict.fromkeys(CLOUDS, _cloud)}
SIZED = ("fake", "local")  # sized by a count of CPUs (clouds are sized by the catalog)


def _makers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    if request.param in CLOUDS:  # its world first, so that it outlives the teardown below
        request.getfixturevalue(request.param)
    made: list[Harness] = []

    def build(caps: LocalCaps | None = None) -> Harness:
        harness = FACTORIES[request.param](request, tmp_path / f"home-{len(made)}", caps)
        made.append(harness)
        return harness

    yield build
    for harness in made:  # leave no process (or instance) behind, whatever the test did
        for res in harness.provider.observe():
            harness.provider.terminate(res.handle)
        assert harness.leftovers() == []


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    yield from _makers(request, tmp_path)


@pytest.fixture(params=SIZED)
def make_sized(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    yield from _makers(request, tmp_path)


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    return make()


def finished(provider: Provider, handle: Handle) -> JobState | None:
    state = provider.job_status(handle)
    return state if state.finished else None


def test_implements_the_protocol(h: Harness) -> None:
    assert isinstance(h.provider, Provider)


def test_job_lifecycle_launch_observe_succeed_logs_terminate(h: Harness) -> None:
    handle = h.provider.launch(h.request("run: echo hi\n"))

    seen = h.provider.observe(Selector(address="job.t"))
    assert [r.handle for r in seen] == [handle]
    assert seen[0].handle.skyform_id == handle.skyform_id
    assert wait_for(lambda: finished(h.provider, handle), "the job to end") == JobState.SUCCEEDED
    logs = [f for f in h.provider.log_paths(handle) if f.stage == "run"]
    assert logs and "hi" in logs[0].path.read_text()

    h.provider.terminate(handle)
    assert h.provider.observe() == []
    h.provider.terminate(handle)  # already gone: still fine


def test_observe_filters_by_selector(h: Harness) -> None:
    a = h.provider.launch(h.request("run: echo a\n", address="job.a"))
    b = h.provider.launch(h.request("run: echo b\n", address="job.b"))
    assert {r.handle for r in h.provider.observe()} == {a, b}
    assert [r.handle for r in h.provider.observe(Selector(skyform_id=b.skyform_id))] == [b]
    assert h.provider.observe(Selector(kind=ResourceKind.CLUSTER)) == []


def test_relaunch_with_the_same_skyform_id_adopts(h: Harness) -> None:
    req = h.request("run: sleep 30\n")
    first = h.provider.launch(req)
    again = h.provider.launch(req)
    assert again == first
    assert len(h.provider.observe()) == 1


def test_handle_survives_a_round_trip_through_the_state_store(h: Harness) -> None:
    handle = h.provider.launch(h.request("run: echo hi\n"))
    stored = Handle.from_dict(handle.as_dict())
    assert stored == handle
    assert wait_for(lambda: finished(h.provider, stored), "the job to end") == JobState.SUCCEEDED


def test_a_node_killed_outside_skyform_is_node_lost(h: Harness) -> None:
    handle = h.provider.launch(h.request("run: sleep 30\n"))
    wait_for(lambda: h.provider.job_status(handle) == JobState.RUNNING, "the job to run")

    h.kill_node(handle)

    assert wait_for(lambda: finished(h.provider, handle), "the loss") == JobState.NODE_LOST
    [res] = h.provider.observe()
    assert res.job == JobState.NODE_LOST and res.job.needs_recovery
    assert res.status == ResourceStatus.DEGRADED
    assert not res.nodes[0].alive


def test_over_capacity_raises_capacity_error_with_the_placement(
    make_sized: Callable[..., Harness],
) -> None:
    h = make_sized(LocalCaps(cpus=1.0))
    req = h.request("run: echo hi\n", cpus=2.0)
    with pytest.raises(CapacityError) as err:
        h.provider.launch(req)
    assert err.value.placement == req.placement
    assert h.provider.observe() == []


def test_running_resources_use_capacity_until_terminated(
    make_sized: Callable[..., Harness],
) -> None:
    h = make_sized(LocalCaps(cpus=1.0))
    first = h.provider.launch(h.request("run: sleep 30\n", address="job.a", cpus=1.0))
    with pytest.raises(CapacityError):
        h.provider.launch(h.request("run: echo hi\n", address="job.b", cpus=1.0))
    assert h.provider.capacity()[0].cpus == pytest.approx(0.0)

    h.provider.terminate(first)
    h.provider.launch(h.request("run: echo hi\n", address="job.b", cpus=1.0))


def test_cluster_stop_and_start(h: Harness) -> None:
    handle = h.provider.launch(h.request("run: echo up\n", "cluster.c", ResourceKind.CLUSTER))
    assert wait_for(lambda: finished(h.provider, handle), "the run") == JobState.SUCCEEDED
    assert h.provider.observe()[0].status == ResourceStatus.UP

    h.provider.stop(handle)
    assert h.provider.observe()[0].status == ResourceStatus.STOPPED
    with pytest.raises(ProviderError):
        h.provider.run(handle, "echo no")

    assert h.provider.start(handle) == handle
    assert h.provider.observe()[0].status == ResourceStatus.UP
    assert h.provider.run(handle, "true") == 0


def test_run_and_start_count_as_activity(h: Harness) -> None:
    """What autostop reads: a run and a start make `last_active` now (clouds keep whole
    seconds, hence the pauses that put them past the launch's second)."""
    handle = h.provider.launch(h.request("run: echo up\n", "cluster.c", ResourceKind.CLUSTER))
    assert wait_for(lambda: finished(h.provider, handle), "the run") == JobState.SUCCEEDED
    time.sleep(1.1)
    before = time.time()
    assert h.provider.run(handle, "true") == 0
    [seen] = h.provider.observe()
    assert seen.last_active >= int(before) > seen.launched_at

    h.provider.stop(handle)
    time.sleep(1.1)
    before = time.time()
    h.provider.start(handle)
    [seen] = h.provider.observe()
    assert seen.last_active >= int(before) > seen.launched_at


def test_jobs_cannot_be_stopped(h: Harness) -> None:
    handle = h.provider.launch(h.request("run: sleep 30\n"))
    with pytest.raises(ProviderError):
        h.provider.stop(handle)


def test_a_failing_run_is_failed(h: Harness) -> None:
    if isinstance(h.provider, FakeProvider):
        h.provider.set_exit_codes("job.t", 3)
    handle = h.provider.launch(h.request("run: exit 3\n"))
    assert wait_for(lambda: finished(h.provider, handle), "the job to end") == JobState.FAILED
    assert h.provider.observe()[0].nodes[0].exit_code == 3
