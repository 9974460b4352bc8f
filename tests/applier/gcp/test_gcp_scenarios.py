"""End to end over the GCP provider: a real plan applied with zone then region failover, AWS
stocked out -> GCP, and a spot job preempted and recovered by the managed-job controller."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.actions import Env
from applier.controllers import job_record as jr
from applier.controllers.common import ControllerSpec
from applier.controllers.job_runner import JobRunner
from applier.execute import Executor
from applier.provider import Handle, Placement, Provider
from applier.providers.aws import AwsProvider
from planner.diff import PlanInputs, make_plan
from planner.plan import Plan
from schema.repo import DesiredState, load_repo
from state import PlacementKey, Store, open_store
from tests.applier.gcp.conftest import MakeGcp
from tests.aws_support.fake_ec2 import CapacityFault, FakeEc2
from tests.gcp_support.fake_gce import FakeGce, Fault
from tests.planner.plan_helpers import MACHINE, catalog, write_repo

IMAGE = "ami-0123456789abcdef0"  # moto does not validate images


def plan_for(root: Path, store: Store) -> tuple[DesiredState, Plan]:
    desired = load_repo(root)
    meta = store.meta()
    inputs = PlanInputs(
        desired=desired,
        observed={},
        catalog=catalog(),
        offerings=MACHINE,
        lineage=meta.lineage,
        serial=meta.serial,
    )
    return desired, make_plan(inputs)


def wait_logged(provider: Provider, handle: Handle, text: str) -> None:
    deadline = time.monotonic() + 30
    while not provider.job_status(handle).finished and time.monotonic() < deadline:
        time.sleep(0.1)
    run_log = next(f.path for f in provider.log_paths(handle) if f.stage == "run")
    assert text in run_log.read_text()


def test_stockouts_fail_over_zone_then_region_in_plan_order(
    make_gcp: MakeGcp, gce: FakeGce, tmp_path: Path
) -> None:
    root = write_repo(
        tmp_path / "repo",
        {
            "skyform.yaml": "infra: [gcp/us-central1, gcp/us-east1]\n",
            "clusters/box.yaml": "resources: {cpus: 2, use_spot: true}\nrun: echo hello-box\n",
        },
    )
    home = tmp_path / "home"
    provider = make_gcp(home, regions=["us-central1", "us-east1"])
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        change = plan.change("cluster.box")
        order = [v for v in (change.placement, *change.failover) if v is not None]
        first_other = next(i for i, v in enumerate(order) if v.region != order[0].region)
        assert first_other >= 2  # several zones of the cheapest region, then the next region
        for view in order[:first_other]:
            gce.state.faults.append(Fault(machine_type=view.instance_type, zone=view.zone))

        env = Env(home=home, base_dir=root, providers={"gcp": provider})
        result = Executor(plan, desired, store, env, plan_id="p1").run()

        assert result.ok, result.failed
        tried = [(v.zone, v.instance_type) for v in order[: first_other + 1]]
        assert gce.state.inserts == tried
        outcomes = [a.outcome for a in result.attempts["cluster.box"]]
        assert outcomes == ["capacity"] * first_other + ["ok"]
        first = order[0]
        key = PlacementKey("gcp", first.region, first.zone, first.instance_type, True, None)
        assert store.is_blocked(key)
        [instance] = gce.live()  # nothing left behind in the stocked-out zones
        assert instance["zone"].endswith(f"/zones/{order[first_other].zone}")
        record = store.get_resource("cluster.box")
        assert record is not None and record.handles is not None
        wait_logged(provider, Handle.from_dict(record.handles["handle"]), "hello-box")


@pytest.fixture(scope="module")
def fake_ec2() -> Iterator[FakeEc2]:
    server = FakeEc2().start()
    yield server
    server.stop()


def test_a_stocked_out_cloud_fails_over_to_the_other_cloud(
    make_gcp: MakeGcp,
    gce: FakeGce,
    fake_ec2: FakeEc2,
    node_settings: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_ec2.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_ec2.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    root = write_repo(
        tmp_path / "repo",
        {
            "skyform.yaml": "infra: [aws/us-east-1, gcp/us-central1]\n",
            "clusters/train.yaml": "resources: {cpus: 2, use_spot: true}\nrun: echo hello-train\n",
        },
    )
    home = tmp_path / "home"
    gcp_provider = make_gcp(home)
    aws = AwsProvider(home, {**node_settings, "regions": ["us-east-1"], "image_id": IMAGE})
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        change = plan.change("cluster.train")
        order = [v for v in (change.placement, *change.failover) if v is not None]
        first_cloud = order[0].cloud
        switch = next(i for i, v in enumerate(order) if v.cloud != first_cloud)
        # The first cloud is stocked out everywhere the plan looks.
        if first_cloud == "aws":
            fake_ec2.faults.capacity.append(CapacityFault())
        else:
            gce.state.faults.append(Fault())
        env = Env(home=home, base_dir=root, providers={"aws": aws, "gcp": gcp_provider})
        result = Executor(plan, desired, store, env, plan_id="p1").run()

        assert result.ok, result.failed
        outcomes = [a.outcome for a in result.attempts["cluster.train"]]
        assert outcomes == ["capacity"] * switch + ["ok"]
        record = store.get_resource("cluster.train")
        assert record is not None and record.handles is not None
        handle = Handle.from_dict(record.handles["handle"])
        assert handle.provider == order[switch].cloud != first_cloud
        landed = gcp_provider if handle.provider == "gcp" else aws
        wait_logged(landed, handle, "hello-train")
        assert len(gce.live()) == (1 if handle.provider == "gcp" else 0)  # nothing left behind
        if first_cloud == "gcp":
            assert [z for z, _ in gce.state.inserts] == [v.zone for v in order[:switch]]


def test_a_preempted_spot_job_is_recovered_by_the_job_controller(
    make_gcp: MakeGcp, gce: FakeGce, tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt-ran"
    # Every node is this host, so a file tells the relaunch that it is the relaunch.
    yaml = (
        "resources: {use_spot: true}\n"
        f"run: |\n  if [ -e {marker} ]; then echo recovered-run\n"
        f"  else touch {marker}; sleep 60; fi\n"
    )
    spot = Placement("gcp", "us-central1", "us-central1-a", "n4-standard-2", use_spot=True)
    other = Placement("gcp", "us-central1", "us-central1-b", "n4-standard-2", use_spot=True)
    spec = ControllerSpec(
        kind="job",
        address="job.train",
        skyform_id="0123456789abcdef",
        source_text=yaml,
        source_file="jobs/train.yaml",
        base_dir=str(tmp_path),
        candidates=(spot.__dict__, other.__dict__),
        poll_seconds=0.1,
    )
    directory = tmp_path / "ctl"
    directory.mkdir()
    provider = make_gcp()
    runner = JobRunner(spec, {"gcp": provider}, directory, retry_gap=0.1)
    for _ in range(300):
        if runner.record.status == jr.RUNNING:
            break
        delay = runner.step()
        assert delay is not None, runner.record.message
        time.sleep(delay)
    assert runner.record.status == jr.RUNNING and marker.exists()
    first = Handle.from_dict(runner.record.handle or {})
    zone, _, name = first.resource_id.partition("/")

    gce.preempt(zone, name, delete=True)  # spot instances are deleted on preemption

    assert runner.run(max_steps=600) == jr.SUCCEEDED, runner.record.message
    assert runner.record.recoveries == 1
    assert gce.live() == [] and provider.observe() == []  # both attempts torn down
    logs = [Path(p["path"]) for p in runner.record.log_paths if p["stage"] == "run"]
    assert any("recovered-run" in p.read_text() for p in logs)
