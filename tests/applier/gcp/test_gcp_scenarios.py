"""End to end over the GCP provider: a real plan applied with zone then region failover, AWS
stocked out -> GCP, a cluster's ports opened by a firewall rule, a spot job preempted and
recovered by the managed-job controller, and autostop (spot, and changed on a running
cluster)."""

from __future__ import annotations

from pathlib import Path

from applier.actions import Env
from applier.execute import Executor
from applier.provider import Handle
from planner.plan import PlacementView
from state import PlacementKey, open_store
from tests.aws_support.fake_ec2 import CapacityFault
from tests.cloud_support.scenarios import (  # noqa: F401
    apply_after_stockouts,
    first_change,
    test_a_changed_autostop_is_applied_to_the_running_cluster,
    test_a_preempted_spot_job_is_recovered_by_the_job_controller,
    test_a_service_replica_serves_on_its_declared_port_told_as_port,
    test_a_spot_cluster_autostops_only_with_down,
)
from tests.cloud_support.worlds import AwsWorld, GcpWorld, plan_for
from tests.gcp_support.fake_gce import Fault
from tests.planner.plan_helpers import write_repo


def test_stockouts_fail_over_zone_then_region_in_plan_order(gcp: GcpWorld, tmp_path: Path) -> None:
    home = tmp_path / "home"

    def stock_out(order: list[PlacementView]) -> int:
        first_other = first_change(order, "region")
        assert first_other >= 2  # several zones of the cheapest region, then the next region
        for view in order[:first_other]:
            gcp.fake.state.faults.append(Fault(machine_type=view.instance_type, zone=view.zone))
        return first_other

    providers = {"gcp": gcp.provider(home, regions=["us-central1", "us-east1"])}
    infra = "gcp/us-central1, gcp/us-east1"
    with apply_after_stockouts(home, infra, providers, stock_out) as done:
        first_other = first_change(done.order, "region")
        tried = [(v.zone, v.instance_type) for v in done.order[: first_other + 1]]
        assert gcp.fake.state.inserts == tried
        first = done.order[0]
        key = PlacementKey("gcp", first.region, first.zone, first.instance_type, True, None)
        assert done.store.is_blocked(key)
        [instance] = gcp.live()  # nothing left behind in the stocked-out zones
        assert instance["zone"].endswith(f"/zones/{done.order[first_other].zone}")


def test_a_stocked_out_cloud_fails_over_to_the_other_cloud(
    gcp: GcpWorld, aws: AwsWorld, tmp_path: Path
) -> None:
    home = tmp_path / "home"

    def stock_out(order: list[PlacementView]) -> int:
        # The first cloud is stocked out everywhere the plan looks.
        if order[0].cloud == "aws":
            aws.fake.faults.capacity.append(CapacityFault())
        else:
            gcp.fake.state.faults.append(Fault())
        return first_change(order, "cloud")

    providers = {"aws": aws.provider(home), "gcp": gcp.provider(home)}
    infra = "aws/us-east-1, gcp/us-central1"
    with apply_after_stockouts(home, infra, providers, stock_out) as done:
        first_cloud, switch = done.order[0].cloud, first_change(done.order, "cloud")
        assert done.handle.provider == done.order[switch].cloud != first_cloud
        assert len(gcp.live()) == (1 if done.handle.provider == "gcp" else 0)  # nothing left
        if first_cloud == "gcp":
            assert [z for z, _ in gcp.fake.state.inserts] == [v.zone for v in done.order[:switch]]


def test_an_applied_cluster_with_ports_opens_them(gcp: GcpWorld, tmp_path: Path) -> None:
    """The task's `resources.ports` reach GCE through plan and apply (a cluster's launch request
    carries no ports of its own): one rule for the cluster's tag, gone with the cluster."""
    home = tmp_path / "home"
    web = "resources: {cpus: 2, ports: [9000-9001, 8080]}\nrun: echo up\n"
    files = {"skyform.yaml": "infra: [gcp/us-central1]\n", "clusters/web.yaml": web}
    root = write_repo(tmp_path / "repo", files)
    provider = gcp.provider(home)
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        env = Env(home=home, base_dir=root, providers={"gcp": provider})
        result = Executor(plan, desired, store, env, plan_id="p1").run()
        assert result.ok, result.failed
        record = store.get_resource("cluster.web")
        assert record is not None and record.handles is not None
        handle = Handle.from_dict(record.handles["handle"])
    [rule] = gcp.fake.firewalls()
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["8080", "9000-9001"]}]
    assert rule["targetTags"] == [f"skyform-{handle.skyform_id[:8]}"]
    [instance] = gcp.live()
    assert rule["targetTags"][0] in instance["tags"]["items"]
    provider.terminate(handle)
    assert gcp.fake.firewalls() == [] and gcp.live() == []
