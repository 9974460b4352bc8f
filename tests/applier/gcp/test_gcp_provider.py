"""The GCP provider on its own: setup and run over SSH with SkyPilot's variables and logs, the
instance GCE is asked for (labels, SSH key, spot, GPUs), stockouts, quota, rate limits,
preemption, and `check` without credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from applier.provider import JobState, LaunchRequest, Placement, ResourceStatus
from applier.providers import gcp_compute
from applier.providers.gcp import check
from schema.errors import CapacityError
from tests.cloud_support.worlds import (
    TWO_NODES,
    GcpWorld,
    exec_then_terminate,
    logs_by_node,
    request,
    two_node_run,
    wait_finished,
)
from tests.gcp_support.fake_gce import Fault

ZONE_A = GcpWorld.placement


def job(yaml: str, placement: Placement = ZONE_A, **fields: Any) -> LaunchRequest:
    return request(yaml, placement, **{"address": "job.My_Train", **fields})


def meta(instance: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["value"] for i in instance["metadata"]["items"]}


def test_setup_and_run_execute_over_ssh_with_skypilot_variables(
    gcp: GcpWorld, tmp_path: Path
) -> None:
    provider = gcp.provider()
    req = job(TWO_NODES, base_dir=tmp_path)
    handle = two_node_run(provider, req, "GCP")
    logs = logs_by_node(provider, handle)
    assert all('"zone": "us-central1-a"' in logs[(rank, "run")] for rank in (0, 1))
    instances = sorted(gcp.live(), key=lambda i: i["name"])
    assert [i["labels"]["skyform-rank"] for i in instances] == ["0", "1"]
    for instance in instances:
        assert instance["labels"]["skyform-address"] == "job-my_train"  # GCE label rules
        assert instance["labels"]["skyform-id"] == handle.skyform_id
        assert meta(instance)["ssh-keys"].startswith("root:ssh-ed25519 ")
        assert instance["scheduling"].get("provisioningModel") != "SPOT"
    exec_then_terminate(provider, handle, gcp)


@pytest.mark.parametrize(
    ("instance_type", "accelerators"),
    [
        ("n1-highmem-4", [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]),
        ("a2-highgpu-1g", []),
    ],
)
def test_gpu_spot_placements_ask_gce_for_spot_and_the_right_accelerators(
    gcp: GcpWorld, instance_type: str, accelerators: list[dict[str, Any]]
) -> None:
    gpu = "T4" if instance_type.startswith("n1") else "A100"
    placement = Placement(
        "gcp", "us-central1", "us-central1-b", instance_type, gpu, 1.0, use_spot=True
    )
    provider = gcp.provider()
    handle = provider.launch(job("run: echo hi\n", placement))
    assert wait_finished(provider, handle) == JobState.SUCCEEDED

    [instance] = gcp.fake.live()
    assert instance["machineType"] == f"zones/us-central1-b/machineTypes/{instance_type}"
    assert instance["scheduling"]["provisioningModel"] == "SPOT"
    assert instance["scheduling"]["onHostMaintenance"] == "TERMINATE"
    got = [
        {**a, "acceleratorType": a["acceleratorType"].rsplit("/", 1)[-1]}
        for a in instance.get("guestAccelerators", [])
    ]
    assert got == accelerators
    assert (
        "deeplearning-platform-release" in instance["disks"][0]["initializeParams"]["sourceImage"]
    )
    provider.terminate(handle)


def test_a_stocked_out_zone_is_a_capacity_error_that_leaves_nothing(
    gcp: GcpWorld,
) -> None:
    gcp.fake.state.faults.append(Fault(machine_type="n4-standard-2", zone="us-central1-a"))
    req = job("num_nodes: 2\nrun: echo hi\n")
    with pytest.raises(CapacityError) as err:
        gcp.provider().launch(req)
    assert err.value.placement == ZONE_A
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in str(err.value)
    assert gcp.fake.state.inserts == [("us-central1-a", "n4-standard-2")]  # no retry in place
    assert gcp.fake.live() == []


def test_a_placement_without_a_zone_tries_the_regions_zones(
    gcp: GcpWorld,
) -> None:
    gcp.fake.state.faults.append(
        Fault("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", zone="us-central1-a")
    )
    provider = gcp.provider()
    handle = provider.launch(
        job("run: echo hi\n", Placement("gcp", "us-central1", None, "e2-small"))
    )
    assert [z for z, _ in gcp.fake.state.inserts] == ["us-central1-a", "us-central1-b"]
    assert handle.resource_id.startswith("us-central1-b/")
    assert wait_finished(provider, handle) == JobState.SUCCEEDED


def test_a_quota_error_names_the_fix(gcp: GcpWorld) -> None:
    gcp.fake.state.faults.append(Fault("QUOTA_EXCEEDED"))
    with pytest.raises(CapacityError) as err:
        gcp.provider().launch(job("run: echo hi\n"))
    message = str(err.value)
    assert "quota" in message and "QUOTA_EXCEEDED" in message and "Quotas" in message
    assert "us-central1" in message and err.value.placement == ZONE_A
    assert gcp.fake.live() == []


def test_rate_limits_are_retried_until_the_launch_succeeds(gcp: GcpWorld) -> None:
    gcp.fake.state.rate_limit_every.update(
        {"POST zones/*/instances": 2, "GET zones/*/instances/*": 2, "GET aggregated/instances": 2}
    )
    provider = gcp.provider()
    handles = [provider.launch(job("run: echo hi\n", address=f"job.r{i}")) for i in range(3)]
    assert gcp.fake.state.rate_limited > 0
    assert len(gcp.fake.live()) == 3
    assert all(wait_finished(provider, h) == JobState.SUCCEEDED for h in handles)


@pytest.mark.parametrize("delete", [False, True])
def test_a_preempted_spot_instance_is_preempted(gcp: GcpWorld, delete: bool) -> None:
    spot = Placement("gcp", "us-central1", "us-central1-c", "n4-standard-2", use_spot=True)
    provider = gcp.provider()
    handle = provider.launch(job("run: sleep 60\n", spot))
    zone, _, name = handle.resource_id.partition("/")

    gcp.fake.preempt(zone, name, delete=delete)

    assert provider.job_status(handle) == JobState.PREEMPTED
    [seen] = provider.observe()
    assert seen.job == JobState.PREEMPTED and seen.status == ResourceStatus.DEGRADED
    assert not seen.nodes[0].alive
    provider.terminate(handle)
    assert provider.observe() == [] and gcp.fake.live() == []


def test_check_without_credentials_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        gcp_compute.ENDPOINT_ENV,
        "GOOGLE_APPLICATION_CREDENTIALS",
        *gcp_compute.PROJECT_ENVS,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC file
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata-server probe
    reason = check({})
    assert reason is not None and "gcloud auth application-default login" in reason


def test_check_with_an_endpoint_needs_a_project(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in gcp_compute.PROJECT_ENVS:
        monkeypatch.delenv(name, raising=False)
    settings = {"api_endpoint": "http://127.0.0.1:9"}
    reason = check(settings)
    assert reason is not None and "GOOGLE_CLOUD_PROJECT" in reason
    assert check({**settings, "project_id": "p"}) is None
