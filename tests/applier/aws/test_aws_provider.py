"""The AWS provider on its own: setup and run over SSH with SkyPilot's variables and logs, spot
and tags on the instances, capacity and quota errors, spot reclaims, throttling."""

from __future__ import annotations

from pathlib import Path

import pytest

from applier.provider import JobState, Placement, ResourceStatus
from applier.providers import ssh
from schema.errors import CapacityError
from tests.aws_support.fake_ec2 import CapacityFault
from tests.cloud_support.worlds import (
    TWO_NODES,
    AwsWorld,
    exec_then_terminate,
    request,
    two_node_run,
    wait_finished,
)

EAST = AwsWorld.placement


def test_setup_and_run_execute_over_ssh_with_skypilot_variables(
    aws: AwsWorld, tmp_path: Path
) -> None:
    provider = aws.provider()
    handle = two_node_run(provider, request(TWO_NODES, EAST, base_dir=tmp_path), "AWS")
    [instance_a, instance_b] = aws.live()
    tags = {t["Key"]: t["Value"] for t in instance_a["Tags"]}
    assert tags["skyform-address"] == "job.t" and tags["skyform-id"] == handle.skyform_id
    assert instance_b["KeyName"] == instance_a["KeyName"]
    exec_then_terminate(provider, handle, aws)


def test_a_stocked_out_zone_moves_to_the_next_without_botocore_retries(aws: AwsWorld) -> None:
    aws.fake.faults.capacity.append(CapacityFault("m6i.large", "us-east-1a"))
    provider = aws.provider()
    handle = provider.launch(request("run: echo hi\n", EAST))

    zones = [c.get("Placement.AvailabilityZone") for c in aws.fake.faults.run_calls]
    assert zones == ["us-east-1a", "us-east-1b"]  # one try each: no retry of a capacity error
    [instance] = aws.live()
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert wait_finished(provider, handle) == JobState.SUCCEEDED


def test_a_zone_placement_that_is_stocked_out_is_a_capacity_error_leaving_nothing(
    aws: AwsWorld,
) -> None:
    aws.fake.faults.capacity.append(CapacityFault("m6i.large", "us-east-1d"))
    placement = Placement("aws", "us-east-1", "use1-az4", "m6i.large", use_spot=True)
    req = request("run: echo hi\n", placement)
    with pytest.raises(CapacityError) as err:
        aws.provider().launch(req)
    assert err.value.placement == placement
    assert "InsufficientInstanceCapacity" in str(err.value)
    assert aws.live() == []


def test_a_quota_error_names_the_fix_and_does_not_try_other_zones(aws: AwsWorld) -> None:
    aws.fake.faults.capacity.append(CapacityFault("m6i.large", code="VcpuLimitExceeded"))
    with pytest.raises(CapacityError) as err:
        aws.provider().launch(request("run: echo hi\n", EAST))
    assert "quota" in str(err.value) and "Service Quotas" in str(err.value)
    assert "us-east-1" in str(err.value)
    assert len(aws.fake.faults.run_calls) == 1
    assert aws.live() == []


@pytest.mark.parametrize("how", ["reclaimed", "vanished"])
def test_a_reclaimed_spot_instance_is_preempted(aws: AwsWorld, how: str) -> None:
    spot = AwsWorld.spot[0]
    provider = aws.provider()
    handle = provider.launch(request("run: sleep 60\n", spot))
    [instance] = aws.live()
    assert instance.get("InstanceLifecycle") == "spot"
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1a"

    if how == "reclaimed":
        aws.preempt(handle)
    else:
        aws.fake.vanish("us-east-1", handle.resource_id)

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


def test_the_tasks_ports_and_a_replicas_port_are_opened_in_the_security_group(
    aws: AwsWorld,
) -> None:
    provider = aws.provider()
    yaml = "resources: {ports: [8080, 10000-10010]}\nrun: echo hi\n"
    handle = provider.launch(request(yaml, EAST, ports=(30001,)))
    try:
        [instance] = aws.live()
        [group] = aws.client().describe_security_groups(
            GroupIds=[g["GroupId"] for g in instance["SecurityGroups"]]
        )["SecurityGroups"]
        opened = {
            (p["FromPort"], p["ToPort"])
            for p in group["IpPermissions"]
            if any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges", []))
        }
        assert opened == {(22, 22), (8080, 8080), (10000, 10010), (30001, 30001)}
    finally:
        provider.terminate(handle)
