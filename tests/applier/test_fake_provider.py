"""The fake provider's scripting: capacity errors by place, transient errors N times, preemption,
node loss, exit codes, and the ordered call record that failover tests assert on.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from applier.provider import (
    FreeCapacity,
    JobState,
    LaunchRequest,
    Placement,
    ResourceKind,
    ResourceStatus,
)
from applier.providers.fake import Call, FakeProvider, PlaceRule
from schema.errors import CapacityError, TransientError
from schema.loader import load_tasks

AWS_1A = Placement(cloud="aws", region="us-east-1", zone="us-east-1a", instance_type="p4d")
AWS_1B = Placement(cloud="aws", region="us-east-1", zone="us-east-1b", instance_type="p4d")
GCP = Placement(cloud="gcp", region="us-central1", instance_type="a2-highgpu-8g")


def request(placement: Placement, address: str = "job.train", num_nodes: int = 1) -> LaunchRequest:
    task = load_tasks("run: python train.py\n", "t.yaml").tasks[0].task
    return LaunchRequest(
        address=address,
        skyform_id=str(uuid.uuid4()),
        kind=ResourceKind.JOB,
        task=task,
        placement=placement,
        num_nodes=num_nodes,
    )


def test_capacity_errors_in_scripted_places_let_failover_be_traced() -> None:
    fake = FakeProvider()
    fake.fail_capacity(PlaceRule(cloud="aws", zone="us-east-1a"))
    fake.fail_capacity(PlaceRule(instance_type="p4d", region="us-east-1"), times=1)

    attempts = []
    for placement in (AWS_1A, AWS_1B, GCP):
        try:
            handle = fake.launch(request(placement))
            attempts.append((placement.describe(), "ok"))
            break
        except CapacityError as err:
            assert err.placement == placement
            attempts.append((placement.describe(), "capacity"))

    assert attempts == [
        ("aws/us-east-1/us-east-1a p4d", "capacity"),
        ("aws/us-east-1/us-east-1b p4d", "capacity"),  # the one-time rule
        ("gcp/us-central1 a2-highgpu-8g", "ok"),
    ]
    assert [c.placement for c in fake.calls] == [AWS_1A, AWS_1B, GCP]
    assert handle.placement == GCP
    fake.launch(request(AWS_1B))  # the one-time rule is used up; zone 1a still fails
    with pytest.raises(CapacityError):
        fake.launch(request(AWS_1A))


def test_transient_errors_n_times_then_success() -> None:
    fake = FakeProvider()
    fake.fail_transient("launch", times=2, retry_after=1.5)
    req = request(GCP)
    for _ in range(2):
        with pytest.raises(TransientError) as err:
            fake.launch(req)
        assert err.value.retry_after == 1.5
    handle = fake.launch(req)
    assert fake.launch(req) == handle  # adopted
    assert [c.verb for c in fake.calls] == ["launch"] * 4
    assert len(fake.resources()) == 1


def test_jobs_run_for_run_polls_then_end_with_scripted_exit_codes(tmp_path: Path) -> None:
    fake = FakeProvider(log_dir=tmp_path, run_polls=2)
    fake.set_exit_codes("job.train", 0, 137)
    fake.set_output("job.train", "epoch 1 loss 0.5")
    handle = fake.launch(request(GCP, num_nodes=2))

    states = [fake.job_status(handle) for _ in range(3)]
    assert states == [JobState.RUNNING, JobState.RUNNING, JobState.FAILED]
    [res] = fake.observe()
    assert [n.exit_code for n in res.nodes] == [0, 137]
    [log] = fake.log_paths(handle)
    assert "epoch 1 loss 0.5" in log.path.read_text()


def test_preemption_and_node_loss_need_recovery() -> None:
    fake = FakeProvider(run_polls=100)
    spot = fake.launch(request(AWS_1A, "job.spot"))
    lost = fake.launch(request(GCP, "job.lost", num_nodes=2))
    fake.preempt(spot)
    fake.lose_node(lost, rank=1)

    by_address = {r.handle.address: r for r in fake.observe()}
    assert by_address["job.spot"].job == JobState.PREEMPTED
    assert by_address["job.lost"].job == JobState.NODE_LOST
    assert [n.alive for n in by_address["job.lost"].nodes] == [True, False]
    assert all(
        r.status == ResourceStatus.DEGRADED and r.job.needs_recovery for r in by_address.values()
    )


def test_capacity_is_reserved_per_place() -> None:
    fake = FakeProvider(capacity=[FreeCapacity("fake", "aws", "us-east-1", 8, 64, "A100", 8)])
    a100 = Placement(
        cloud="aws", region="us-east-1", accelerator="A100", accelerator_count=8, cpus=4
    )
    handle = fake.launch(request(a100, "job.a"))
    assert fake.capacity()[0].accelerator_count == 0
    with pytest.raises(CapacityError, match="A100"):
        fake.launch(request(a100, "job.b"))
    fake.launch(request(GCP, "job.elsewhere"))  # another place: not limited

    fake.terminate(handle)
    fake.launch(request(a100, "job.b"))


def test_every_call_is_recorded_in_order() -> None:
    fake = FakeProvider()
    handle = fake.launch(request(GCP))
    fake.job_status(handle)
    fake.observe()
    fake.terminate(handle)
    assert fake.calls == [
        Call("launch", "job.train", handle.skyform_id, GCP),
        Call("job_status", "job.train", handle.skyform_id),
        Call("observe"),
        Call("terminate", "job.train", handle.skyform_id),
    ]
