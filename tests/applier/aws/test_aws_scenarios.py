"""End to end over the AWS provider: a real plan applied with zone then region failover, a spot
job preempted and recovered by the managed-job controller, 50 launches under throttling, and
autostop (spot, and changed on a running cluster)."""

from __future__ import annotations

from pathlib import Path

from applier.actions import Env
from applier.execute import Executor
from planner.plan import PlacementView
from state import PlacementKey, open_store
from tests.aws_support.fake_ec2 import CapacityFault
from tests.cloud_support.scenarios import (  # noqa: F401
    apply_after_stockouts,
    test_a_changed_autostop_is_applied_to_the_running_cluster,
    test_a_preempted_spot_job_is_recovered_by_the_job_controller,
    test_a_service_replica_serves_on_its_declared_port_told_as_port,
    test_a_spot_cluster_autostops_only_with_down,
)
from tests.cloud_support.worlds import AWS_REGIONS, AwsWorld, plan_for
from tests.planner.plan_helpers import write_repo


def test_stockouts_fail_over_zone_then_region_in_plan_order(aws: AwsWorld, tmp_path: Path) -> None:
    home = tmp_path / "home"
    names = aws.zone_names()
    faults = aws.fake.faults

    def stock_out(order: list[PlacementView]) -> int:
        # The catalog's order for this shape: two us-east-1 zones, then us-west-2.
        assert order[0].region == order[1].region == "us-east-1"
        assert order[2].region == "us-west-2"
        for view in order[:2]:
            faults.capacity.append(CapacityFault(view.instance_type, names[view.zone or ""]))
        return 2

    providers = {"aws": aws.provider(home, regions=list(AWS_REGIONS))}
    infra = "aws/us-east-1, aws/us-west-2"
    with apply_after_stockouts(home, infra, providers, stock_out) as done:
        order = done.order
        tried = [(c["InstanceType"], c["Placement.AvailabilityZone"]) for c in faults.run_calls]
        assert tried == [(v.instance_type, names[v.zone or ""]) for v in order[:3]]
        first = order[0]
        key = PlacementKey("aws", first.region, first.zone, first.instance_type, True, None)
        assert done.store.is_blocked(key)
        [instance] = aws.live()  # nothing left behind in the stocked-out zones
        assert instance["Placement"]["AvailabilityZone"] == names[order[2].zone or ""]


def test_fifty_parallel_launches_converge_under_throttling(aws: AwsWorld, tmp_path: Path) -> None:
    files = {"skyform.yaml": "infra: [aws/us-east-1]\n"}
    for i in range(50):
        files[f"clusters/c{i:02d}.yaml"] = "resources: {instance_type: m6i.large}\n"
    root = write_repo(tmp_path / "repo", files)
    home = tmp_path / "home"
    provider = aws.provider(home)
    aws.fake.faults.throttle_every.update({"RunInstances": 3, "DescribeInstances": 4})
    with open_store(None, home) as store:
        desired, plan = plan_for(root, store)
        env = Env(home=home, base_dir=root, providers={"aws": provider})
        result = Executor(plan, desired, store, env, plan_id="p1", parallelism=50).run()

        assert result.ok, result.failed
        assert aws.fake.faults.throttled > 0
        assert len(store.list_resources()) == 50
        instances = aws.live()
        owners = sorted(
            {t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "skyform-address"}
        )
        assert len(instances) == 50 and len(owners) == 50  # one instance each, no duplicates
        assert len(provider.observe()) == 50
