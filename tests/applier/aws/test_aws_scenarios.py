"""End to end over the AWS provider: a real plan applied with zone then region failover, a spot
job preempted and recovered by the managed-job controller, and 50 launches under throttling."""

from __future__ import annotations

import time
from pathlib import Path

import boto3

from applier.actions import Env
from applier.controllers import job_record as jr
from applier.controllers.common import ControllerSpec
from applier.controllers.job_runner import JobRunner
from applier.execute import Executor
from applier.provider import Handle, Placement
from planner.diff import PlanInputs, make_plan
from planner.plan import Plan
from schema.repo import DesiredState, load_repo
from state import PlacementKey, Store, open_store
from tests.applier.aws.conftest import MakeAws
from tests.aws_support.fake_ec2 import CapacityFault, FakeEc2
from tests.planner.plan_helpers import MACHINE, catalog, write_repo

REGIONS = ["us-east-1", "us-west-2"]


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


def zone_names() -> dict[str, str]:
    out = {}
    for region in REGIONS:
        zones = boto3.client("ec2", region_name=region).describe_availability_zones()
        out |= {z["ZoneId"]: z["ZoneName"] for z in zones["AvailabilityZones"]}
    return out


def live_everywhere() -> list[dict[str, object]]:
    out = []
    for region in REGIONS:
        found = boto3.client("ec2", region_name=region).describe_instances()["Reservations"]
        out += [i for r in found for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    return out


def test_stockouts_fail_over_zone_then_region_in_plan_order(
    make_aws: MakeAws, ec2: FakeEc2, tmp_path: Path
) -> None:
    root = write_repo(
        tmp_path / "repo",
        {
            "skyform.yaml": "infra: [aws/us-east-1, aws/us-west-2]\n",
            "clusters/box.yaml": "resources: {cpus: 2, use_spot: true}\nrun: echo hello-box\n",
        },
    )
    home = tmp_path / "home"
    provider = make_aws(home, regions=REGIONS)
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        change = plan.change("cluster.box")
        order = [v for v in (change.placement, *change.failover) if v is not None]
        # The catalog's order for this shape: two us-east-1 zones, then us-west-2.
        assert order[0].region == order[1].region == "us-east-1"
        assert order[2].region == "us-west-2"
        names = zone_names()
        for view in order[:2]:
            ec2.faults.capacity.append(CapacityFault(view.instance_type, names[view.zone or ""]))

        env = Env(home=home, base_dir=root, providers={"aws": provider})
        result = Executor(plan, desired, store, env, plan_id="p1").run()

        assert result.ok, result.failed
        tried = [(c["InstanceType"], c["Placement.AvailabilityZone"]) for c in ec2.faults.run_calls]
        assert tried == [(v.instance_type, names[v.zone or ""]) for v in order[:3]]
        assert [a.outcome for a in result.attempts["cluster.box"]] == ["capacity", "capacity", "ok"]
        first = order[0]
        key = PlacementKey("aws", first.region, first.zone, first.instance_type, True, None)
        assert store.is_blocked(key)
        [instance] = live_everywhere()  # nothing left behind in the stocked-out zones
        assert instance["Placement"]["AvailabilityZone"] == names[order[2].zone or ""]  # type: ignore[index]
        record = store.get_resource("cluster.box")
        assert record is not None and record.handles is not None
        handle = Handle.from_dict(record.handles["handle"])
        deadline = time.monotonic() + 30
        while not provider.job_status(handle).finished and time.monotonic() < deadline:
            time.sleep(0.1)
        run_log = next(f.path for f in provider.log_paths(handle) if f.stage == "run")
        assert "hello-box" in run_log.read_text()


def test_a_preempted_spot_job_is_recovered_by_the_job_controller(
    make_aws: MakeAws, ec2: FakeEc2, tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt-ran"
    # Every node is this host, so a file tells the relaunch that it is the relaunch.
    yaml = (
        "resources: {use_spot: true}\n"
        f"run: |\n  if [ -e {marker} ]; then echo recovered-run\n"
        f"  else touch {marker}; sleep 60; fi\n"
    )
    spot = Placement("aws", "us-east-1", "use1-az6", "m6i.large", use_spot=True)
    other = Placement("aws", "us-east-1", "use1-az1", "m6i.large", use_spot=True)
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
    provider = make_aws()
    runner = JobRunner(spec, {"aws": provider}, directory, retry_gap=0.1)
    for _ in range(300):
        if runner.record.status == jr.RUNNING:
            break
        delay = runner.step()
        assert delay is not None, runner.record.message
        time.sleep(delay)
    assert runner.record.status == jr.RUNNING and marker.exists()
    first = Handle.from_dict(runner.record.handle or {})

    ec2.reclaim_spot("us-east-1", first.resource_id)

    assert runner.run(max_steps=600) == jr.SUCCEEDED, runner.record.message
    assert runner.record.recoveries == 1
    assert live_everywhere() == [] and provider.observe() == []  # both attempts torn down
    logs = [Path(p["path"]) for p in runner.record.log_paths if p["stage"] == "run"]
    assert any("recovered-run" in p.read_text() for p in logs)


def test_fifty_parallel_launches_converge_under_throttling(
    make_aws: MakeAws, ec2: FakeEc2, tmp_path: Path
) -> None:
    files = {"skyform.yaml": "infra: [aws/us-east-1]\n"}
    for i in range(50):
        files[f"clusters/c{i:02d}.yaml"] = "resources: {instance_type: m6i.large}\n"
    root = write_repo(tmp_path / "repo", files)
    home = tmp_path / "home"
    provider = make_aws(home)
    ec2.faults.throttle_every.update({"RunInstances": 3, "DescribeInstances": 4})
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        env = Env(home=home, base_dir=root, providers={"aws": provider})
        result = Executor(plan, desired, store, env, plan_id="p1", parallelism=50).run()

        assert result.ok, result.failed
        assert ec2.faults.throttled > 0
        assert len(store.list_resources()) == 50
        instances = live_everywhere()
        owners = sorted(
            {t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "skyform-address"}
        )  # type: ignore[attr-defined]
        assert len(instances) == 50 and len(owners) == 50  # one instance each, no duplicates
        assert len(provider.observe()) == 50
