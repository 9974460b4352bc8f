"""The GCP provider on its own: setup and run over SSH with SkyPilot's variables and logs, the
instance GCE is asked for (labels, SSH key, spot, GPUs), stockouts, quota, rate limits,
preemption, and `check` without credentials."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from applier.provider import JobState, LaunchRequest, Placement, ResourceKind, ResourceStatus
from applier.providers import gcp, gcp_compute
from applier.providers.gcp import GcpProvider
from schema.errors import CapacityError
from schema.loader import load_tasks
from tests.applier.gcp.conftest import MakeGcp
from tests.gcp_support.fake_gce import FakeGce, Fault

ZONE_A = Placement("gcp", "us-central1", "us-central1-a", "n4-standard-2", cpus=2.0)


def request(yaml: str, placement: Placement = ZONE_A, **kw: object) -> LaunchRequest:
    task = load_tasks(yaml, "t.yaml").tasks[0].task
    fields: dict[str, object] = {
        "address": "job.My_Train",
        "skyform_id": uuid.uuid4().hex,
        "kind": ResourceKind.JOB,
        "task": task,
        "placement": placement,
        "num_nodes": task.num_nodes,
    }
    return LaunchRequest(**{**fields, **kw})  # type: ignore[arg-type]


def wait_finished(provider: GcpProvider, handle: object, timeout: float = 30) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = provider.job_status(handle)  # type: ignore[arg-type]
        if state.finished:
            return state
        time.sleep(0.1)
    raise AssertionError(f"the job did not finish within {timeout}s")


def meta(instance: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["value"] for i in instance["metadata"]["items"]}


def test_setup_and_run_execute_over_ssh_with_skypilot_variables(
    make_gcp: MakeGcp, gce: FakeGce, tmp_path: Path
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
    provider = make_gcp()
    handle = provider.launch(request(yaml, base_dir=tmp_path))

    assert wait_finished(provider, handle) == JobState.SUCCEEDED
    logs = {(f.rank, f.stage): f.path.read_text() for f in provider.log_paths(handle)}
    for rank in (0, 1):
        assert f"setup-on-{rank}" in logs[(rank, "setup")]
        run = logs[(rank, "run")]
        assert f"rank={rank} of 2 hello" in run
        assert "ips=2 gpus=0" in run and '"cloud": "GCP"' in run
        assert '"zone": "us-central1-a"' in run
        assert f"task={handle.task_id}" in run and "from-the-workdir" in run
    instances = sorted(gce.live(), key=lambda i: i["name"])
    assert [i["labels"]["skyform-rank"] for i in instances] == ["0", "1"]
    for instance in instances:
        assert instance["labels"]["skyform-address"] == "job-my_train"  # GCE label rules
        assert instance["labels"]["skyform-id"] == handle.skyform_id
        assert meta(instance)["ssh-keys"].startswith("root:ssh-ed25519 ")
        assert instance["scheduling"].get("provisioningModel") != "SPOT"
    assert provider.run(handle, "echo exec-$SKYPILOT_NODE_RANK", node=1) == 0
    exec_log = next(f for f in provider.log_paths(handle) if f.stage == "exec")
    assert "exec-1" in exec_log.path.read_text()
    provider.terminate(handle)
    assert gce.live() == [] and provider.observe() == []


@pytest.mark.parametrize(
    ("instance_type", "accelerators"),
    [
        ("n1-highmem-4", [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]),
        ("a2-highgpu-1g", []),
    ],
)
def test_gpu_spot_placements_ask_gce_for_spot_and_the_right_accelerators(
    make_gcp: MakeGcp, gce: FakeGce, instance_type: str, accelerators: list[dict[str, Any]]
) -> None:
    gpu = "T4" if instance_type.startswith("n1") else "A100"
    placement = Placement(
        "gcp", "us-central1", "us-central1-b", instance_type, gpu, 1.0, use_spot=True
    )
    provider = make_gcp()
    handle = provider.launch(request("run: echo hi\n", placement))
    assert wait_finished(provider, handle) == JobState.SUCCEEDED

    [instance] = gce.live()
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
    make_gcp: MakeGcp, gce: FakeGce
) -> None:
    gce.state.faults.append(Fault(machine_type="n4-standard-2", zone="us-central1-a"))
    req = request("num_nodes: 2\nrun: echo hi\n")
    with pytest.raises(CapacityError) as err:
        make_gcp().launch(req)
    assert err.value.placement == ZONE_A
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in str(err.value)
    assert gce.state.inserts == [("us-central1-a", "n4-standard-2")]  # no retry in place
    assert gce.live() == []


def test_a_placement_without_a_zone_tries_the_regions_zones(
    make_gcp: MakeGcp, gce: FakeGce
) -> None:
    gce.state.faults.append(
        Fault("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", zone="us-central1-a")
    )
    provider = make_gcp()
    handle = provider.launch(
        request("run: echo hi\n", Placement("gcp", "us-central1", None, "e2-small"))
    )
    assert [z for z, _ in gce.state.inserts] == ["us-central1-a", "us-central1-b"]
    assert handle.resource_id.startswith("us-central1-b/")
    assert wait_finished(provider, handle) == JobState.SUCCEEDED


def test_a_quota_error_names_the_fix(make_gcp: MakeGcp, gce: FakeGce) -> None:
    gce.state.faults.append(Fault("QUOTA_EXCEEDED"))
    with pytest.raises(CapacityError) as err:
        make_gcp().launch(request("run: echo hi\n"))
    message = str(err.value)
    assert "quota" in message and "QUOTA_EXCEEDED" in message and "Quotas" in message
    assert "us-central1" in message and err.value.placement == ZONE_A
    assert gce.live() == []


def test_rate_limits_are_retried_until_the_launch_succeeds(make_gcp: MakeGcp, gce: FakeGce) -> None:
    gce.state.rate_limit_every.update(
        {"POST zones/*/instances": 2, "GET zones/*/instances/*": 2, "GET aggregated/instances": 2}
    )
    provider = make_gcp()
    handles = [provider.launch(request("run: echo hi\n", address=f"job.r{i}")) for i in range(3)]
    assert gce.state.rate_limited > 0
    assert len(gce.live()) == 3
    assert all(wait_finished(provider, h) == JobState.SUCCEEDED for h in handles)


@pytest.mark.parametrize("delete", [False, True])
def test_a_preempted_spot_instance_is_preempted(
    make_gcp: MakeGcp, gce: FakeGce, delete: bool
) -> None:
    spot = Placement("gcp", "us-central1", "us-central1-c", "n4-standard-2", use_spot=True)
    provider = make_gcp()
    handle = provider.launch(request("run: sleep 60\n", spot))
    zone, _, name = handle.resource_id.partition("/")

    gce.preempt(zone, name, delete=delete)

    assert provider.job_status(handle) == JobState.PREEMPTED
    [seen] = provider.observe()
    assert seen.job == JobState.PREEMPTED and seen.status == ResourceStatus.DEGRADED
    assert not seen.nodes[0].alive
    provider.terminate(handle)
    assert provider.observe() == [] and gce.live() == []


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
    reason = gcp.check({})
    assert reason is not None and "gcloud auth application-default login" in reason


def test_check_with_an_endpoint_needs_a_project(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in gcp_compute.PROJECT_ENVS:
        monkeypatch.delenv(name, raising=False)
    settings = {"api_endpoint": "http://127.0.0.1:9"}
    reason = gcp.check(settings)
    assert reason is not None and "GOOGLE_CLOUD_PROJECT" in reason
    assert gcp.check({**settings, "project_id": "p"}) is None
