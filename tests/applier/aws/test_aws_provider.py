"""The AWS provider on its own: setup and run over SSH with SkyPilot's variables and logs, spot
and tags on the instances, capacity and quota errors, spot reclaims, throttling."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import boto3
import pytest

from applier.provider import JobState, LaunchRequest, Placement, ResourceKind, ResourceStatus
from applier.providers import ssh
from applier.providers.aws import AwsProvider
from schema.errors import CapacityError
from schema.loader import load_tasks
from tests.applier.aws.conftest import MakeAws
from tests.aws_support.fake_ec2 import CapacityFault, FakeEc2

EAST = Placement("aws", "us-east-1", None, "m6i.large", cpus=2.0, memory_gib=8.0)


def request(yaml: str, placement: Placement = EAST, **kw: object) -> LaunchRequest:
    task = load_tasks(yaml, "t.yaml").tasks[0].task
    fields: dict[str, object] = {
        "address": "job.t",
        "skyform_id": uuid.uuid4().hex,
        "kind": ResourceKind.JOB,
        "task": task,
        "placement": placement,
        "num_nodes": task.num_nodes,
    }
    return LaunchRequest(**{**fields, **kw})  # type: ignore[arg-type]


def wait_finished(provider: AwsProvider, handle: object, timeout: float = 30) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = provider.job_status(handle)  # type: ignore[arg-type]
        if state.finished:
            return state
        time.sleep(0.1)
    raise AssertionError(f"the job did not finish within {timeout}s")


def live(region: str = "us-east-1") -> list[dict[str, object]]:
    ec2 = boto3.client("ec2", region_name=region)
    found = ec2.describe_instances()["Reservations"]
    return [i for r in found for i in r["Instances"] if i["State"]["Name"] != "terminated"]


def test_setup_and_run_execute_over_ssh_with_skypilot_variables(
    make_aws: MakeAws, tmp_path: Path
) -> None:
    workdir = tmp_path / "src"
    workdir.mkdir()
    (workdir / "data.txt").write_text("from-the-workdir\n")
    yaml = (
        "num_nodes: 2\nworkdir: src\nenvs: {GREETING: hello}\n"
        "setup: echo setup-on-$SKYPILOT_SETUP_NODE_RANK\n"
        "run: |\n"
        "  echo rank=$SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES $GREETING\n"
        '  echo ips=$(echo "$SKYPILOT_NODE_IPS" | wc -l) gpus=$SKYPILOT_NUM_GPUS_PER_NODE\n'
        "  echo $SKYPILOT_CLUSTER_INFO task=$SKYPILOT_TASK_ID\n"
        "  cat data.txt\n"
    )
    provider = make_aws()
    handle = provider.launch(request(yaml, base_dir=tmp_path))

    assert wait_finished(provider, handle) == JobState.SUCCEEDED
    logs = {(f.rank, f.stage): f.path.read_text() for f in provider.log_paths(handle)}
    for rank in (0, 1):
        assert f"setup-on-{rank}" in logs[(rank, "setup")]
        run = logs[(rank, "run")]
        assert f"rank={rank} of 2 hello" in run
        assert "ips=2 gpus=0" in run and '"cloud": "AWS"' in run
        assert f"task={handle.task_id}" in run and "from-the-workdir" in run
    [instance_a, instance_b] = live()
    tags = {t["Key"]: t["Value"] for t in instance_a["Tags"]}  # type: ignore[attr-defined]
    assert tags["skyform-address"] == "job.t" and tags["skyform-id"] == handle.skyform_id
    assert instance_b["KeyName"] == instance_a["KeyName"]
    assert provider.run(handle, "echo exec-$SKYPILOT_NODE_RANK", node=1) == 0
    assert (
        "exec-1"
        in next(f for f in provider.log_paths(handle) if f.stage == "exec").path.read_text()
    )
    provider.terminate(handle)
    assert live() == [] and provider.observe() == []


def test_a_stocked_out_zone_moves_to_the_next_without_botocore_retries(
    make_aws: MakeAws, ec2: FakeEc2
) -> None:
    ec2.faults.capacity.append(CapacityFault("m6i.large", "us-east-1a"))
    provider = make_aws()
    handle = provider.launch(request("run: echo hi\n"))

    zones = [c.get("Placement.AvailabilityZone") for c in ec2.faults.run_calls]
    assert zones == ["us-east-1a", "us-east-1b"]  # one try each: no retry of a capacity error
    [instance] = live()
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"  # type: ignore[index]
    assert wait_finished(provider, handle) == JobState.SUCCEEDED


def test_a_zone_placement_that_is_stocked_out_is_a_capacity_error_leaving_nothing(
    make_aws: MakeAws, ec2: FakeEc2
) -> None:
    ec2.faults.capacity.append(CapacityFault("m6i.large", "us-east-1d"))
    placement = Placement("aws", "us-east-1", "use1-az4", "m6i.large", use_spot=True)
    req = request("run: echo hi\n", placement)
    with pytest.raises(CapacityError) as err:
        make_aws().launch(req)
    assert err.value.placement == placement
    assert "InsufficientInstanceCapacity" in str(err.value)
    assert live() == []


def test_a_quota_error_names_the_fix_and_does_not_try_other_zones(
    make_aws: MakeAws, ec2: FakeEc2
) -> None:
    ec2.faults.capacity.append(CapacityFault("m6i.large", code="VcpuLimitExceeded"))
    with pytest.raises(CapacityError) as err:
        make_aws().launch(request("run: echo hi\n"))
    assert "quota" in str(err.value) and "Service Quotas" in str(err.value)
    assert "us-east-1" in str(err.value)
    assert len(ec2.faults.run_calls) == 1
    assert live() == []


@pytest.mark.parametrize("how", ["reclaimed", "vanished"])
def test_a_reclaimed_spot_instance_is_preempted(make_aws: MakeAws, ec2: FakeEc2, how: str) -> None:
    spot = Placement("aws", "us-east-1", "use1-az6", "m6i.large", use_spot=True)
    provider = make_aws()
    handle = provider.launch(request("run: sleep 60\n", spot))
    [instance] = live()
    assert instance.get("InstanceLifecycle") == "spot"
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1a"  # type: ignore[index]

    if how == "reclaimed":
        ec2.reclaim_spot("us-east-1", handle.resource_id)
    else:
        ec2.vanish("us-east-1", handle.resource_id)

    assert provider.job_status(handle) == JobState.PREEMPTED
    if how == "reclaimed":  # EC2 still lists it, terminated, for a while
        [seen] = provider.observe()
        assert seen.job == JobState.PREEMPTED and seen.status == ResourceStatus.DEGRADED
        assert not seen.nodes[0].alive
    provider.terminate(handle)
    assert provider.observe() == []


def test_the_ssh_key_is_made_once_and_private(tmp_path: Path) -> None:
    private, public = ssh.ensure_key(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.startswith("ssh-ed25519 ")
    assert ssh.ensure_key(tmp_path) == (private, public)
