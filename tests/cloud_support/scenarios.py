"""End-to-end scenarios of both clouds: applying a plan whose first placements are stocked out
(`apply_after_stockouts`), and the tests both run, over the `world` fixture of the test modules
that import them (`tests/applier/aws`, `tests/applier/gcp`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from applier.actions import Env
from applier.autostop import Stopped, enforce
from applier.controllers import job_record as jr
from applier.controllers.common import ControllerSpec
from applier.controllers.job_runner import JobRunner
from applier.controllers.service_replicas import replica_port
from applier.execute import Executor
from applier.provider import (
    Handle,
    LaunchRequest,
    ObservedResource,
    Provider,
    ResourceKind,
    ResourceStatus,
)
from applier.providers import cloud_nodes
from planner.plan import PlacementView
from schema.loader import load_tasks
from state import Store, open_store
from tests.cloud_support.worlds import World, plan_for, request, run_log
from tests.planner.plan_helpers import write_repo

SPOT_BOX = "resources: {cpus: 2, use_spot: true}\nrun: echo hello-box\n"


@dataclass(frozen=True)
class FailedOver:
    order: list[PlacementView]  # the plan's placement, then its failover order
    store: Store
    handle: Handle  # where the box runs


@contextmanager
def apply_after_stockouts(
    home: Path,
    infra: str,
    providers: Mapping[str, Provider],
    stock_out: Callable[[list[PlacementView]], int],
) -> Iterator[FailedOver]:
    """Plan `cluster.box` (a spot box) over `infra`, have `stock_out` make the first placements
    of the plan's order fail (it says how many), and apply: one capacity failure each, then the
    box runs on the next placement. The state store (in `home`) is open while the block runs."""
    root = write_repo(
        home.parent / "repo", {"skyform.yaml": f"infra: [{infra}]\n", "clusters/box.yaml": SPOT_BOX}
    )
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        change = plan.change("cluster.box")
        order = [v for v in (change.placement, *change.failover) if v is not None]
        stocked_out = stock_out(order)

        env = Env(home=home, base_dir=root, providers=dict(providers))
        result = Executor(plan, desired, store, env, plan_id="p1").run()

        assert result.ok, result.failed
        outcomes = [a.outcome for a in result.attempts["cluster.box"]]
        assert outcomes == ["capacity"] * stocked_out + ["ok"]
        record = store.get_resource("cluster.box")
        assert record is not None and record.handles is not None
        handle = Handle.from_dict(record.handles["handle"])
        assert "hello-box" in run_log(providers[handle.provider], handle)
        yield FailedOver(order, store, handle)


def first_change(order: list[PlacementView], field: str) -> int:
    """The index of the first placement whose `field` (region, cloud) is not the first's."""
    return next(i for i, v in enumerate(order) if getattr(v, field) != getattr(order[0], field))


def test_a_preempted_spot_job_is_recovered_by_the_job_controller(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt-ran"
    # Every node is this host, so a file tells the relaunch that it is the relaunch.
    yaml = (
        "resources: {use_spot: true}\n"
        f"run: |\n  if [ -e {marker} ]; then echo recovered-run\n"
        f"  else touch {marker}; sleep 60; fi\n"
    )
    spec = ControllerSpec(
        kind="job",
        address="job.train",
        skyform_id="0123456789abcdef",
        source_text=yaml,
        source_file="jobs/train.yaml",
        base_dir=str(tmp_path),
        candidates=tuple(p.__dict__ for p in world.spot),
        poll_seconds=0.1,
    )
    directory = tmp_path / "ctl"
    directory.mkdir()
    provider = world.provider()
    runner = JobRunner(spec, {world.name: provider}, directory, retry_gap=0.1)
    for _ in range(300):
        if runner.record.status == jr.RUNNING:
            break
        delay = runner.step()
        assert delay is not None, runner.record.message
        time.sleep(delay)
    assert runner.record.status == jr.RUNNING and marker.exists()
    first = Handle.from_dict(runner.record.handle or {})

    world.preempt(first)

    assert runner.run(max_steps=600) == jr.SUCCEEDED, runner.record.message
    assert runner.record.recoveries == 1
    assert world.live() == [] and provider.observe() == []  # both attempts torn down
    logs = [Path(p["path"]) for p in runner.record.log_paths if p["stage"] == "run"]
    assert any("recovered-run" in p.read_text() for p in logs)


def test_a_spot_cluster_autostops_only_with_down(world: World) -> None:
    """Spot instances cannot be stopped, only ended: a plain autostop is not enforced on them
    (as SkyPilot refuses it), one with `down` tears the idle cluster down."""
    provider = world.provider()
    for name, autostop in (("kept", "5"), ("gone", "{idle_minutes: 5, down: true}")):
        yaml = f"resources: {{autostop: {autostop}}}\nrun: echo up\n"
        address, kind = f"cluster.{name}", ResourceKind.CLUSTER
        provider.launch(request(yaml, world.spot[0], address=address, kind=kind))
    seen = {r.handle.address: r for r in provider.observe()}
    assert (seen["cluster.gone"].autostop_minutes, seen["cluster.gone"].autostop_down) == (5, True)
    assert seen["cluster.kept"].autostop_minutes is None

    later = seen["cluster.gone"].last_active + 6 * 60  # both idle for 6 minutes or more
    assert enforce({world.name: provider}, later) == [Stopped("cluster.gone", True, 6.0)]
    [kept] = provider.observe()
    assert kept.handle.address == "cluster.kept" and kept.status == ResourceStatus.UP
    provider.terminate(kept.handle)


def test_a_changed_autostop_is_applied_to_the_running_cluster(world: World) -> None:
    """`resources.autostop` changed on a running cluster is an in-place update: the relaunch
    with the same Skyform id adopts the instances and rewrites their autostop mark (or removes
    it), with one call for all instances on AWS and one per instance on GCP, and none when it
    did not change; observe() and `applier.autostop.enforce` then go by the new autostop."""
    provider = world.provider()
    writes_per_change = {"aws": 1, "gcp": 2}[world.name]

    def cluster(autostop: str | None, skyform_id: str | None = None) -> LaunchRequest:
        resources = f"resources: {{autostop: {autostop}}}\n" if autostop else ""
        yaml = f"num_nodes: 2\n{resources}run: echo up\n"
        ids = {"skyform_id": skyform_id} if skyform_id else {}
        return request(yaml, world.placement, address="cluster.c", kind=ResourceKind.CLUSTER, **ids)

    first = cluster("10")
    handle = provider.launch(first)
    [seen] = provider.observe()
    assert (seen.autostop_minutes, seen.autostop_down) == (10, False)

    def relaunch(autostop: str | None) -> tuple[ObservedResource, int]:
        """Launch `cluster.c` again with `autostop`: what observe() says, and the mark writes."""
        before = world.mark_writes()
        assert provider.launch(cluster(autostop, first.skyform_id)) == handle  # adopted
        assert len(world.live()) == 2  # the same two instances, nothing created
        [seen] = provider.observe()
        return seen, world.mark_writes() - before

    seen, writes = relaunch("10")
    assert (seen.autostop_minutes, seen.autostop_down) == (10, False)
    assert writes == 0  # unchanged: not a call more

    seen, writes = relaunch("{idle_minutes: 5, down: true}")
    assert (seen.autostop_minutes, seen.autostop_down) == (5, True)
    assert [m[cloud_nodes.AUTOSTOP_KEY] for m in world.marks(handle)] == ["5-down"] * 2
    assert writes == writes_per_change

    seen, writes = relaunch(None)  # autostop removed
    assert (seen.autostop_minutes, seen.autostop_down) == (None, False)
    assert all(cloud_nodes.AUTOSTOP_KEY not in m for m in world.marks(handle))
    assert all("skyform-id" in m for m in world.marks(handle))  # the other marks are kept
    assert writes == writes_per_change
    providers = {world.name: provider}
    assert enforce(providers, seen.last_active + 60 * 60) == []
    assert [r.status for r in provider.observe()] == [ResourceStatus.UP]

    seen, writes = relaunch("{idle_minutes: 5, down: true}")
    assert (seen.autostop_minutes, seen.autostop_down) == (5, True)
    assert writes == writes_per_change
    assert seen.last_active == seen.launched_at  # relaunching is not activity
    assert enforce(providers, seen.last_active + 6 * 60) == [Stopped("cluster.c", True, 6.0)]
    assert world.live() == [] and provider.observe() == []


def test_a_service_replica_serves_on_its_declared_port_told_as_port(world: World) -> None:
    """A replica on a cloud instance has the host to itself: it serves on the port the task
    declares (as SkyPilot's replicas do), the endpoint names that port, and `$PORT` says it."""
    yaml = "service: {readiness_probe: /, ports: 8000}\nrun: echo serving-on-$PORT\n"
    task = load_tasks(yaml, "svc.yaml").tasks[0].task
    port = replica_port(task, world.name)
    assert port == 8000
    provider = world.provider()
    req = request(
        yaml,
        world.placement,
        address="service.api",
        kind=ResourceKind.SERVICE_REPLICA,
        ports=(port,),
        replica_id=1,
    )
    handle = provider.launch(req)
    try:
        assert handle.endpoint is not None and handle.endpoint.endswith(":8000")
        assert "serving-on-8000" in run_log(provider, handle)
    finally:
        provider.terminate(handle)
