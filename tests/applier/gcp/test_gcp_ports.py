"""The GCP provider opens a resource's ports: one VPC firewall rule `skyform-<id8>-ports` per
resource, for the network tag its instances carry, made before the first instance is inserted,
adopted (and patched) by a relaunch, deleted at terminate and by a failed launch; a firewall
quota is a ProviderError that names the fix. Real google-cloud-compute against the fake GCE."""

from __future__ import annotations

from typing import Any

import pytest

from applier.provider import LaunchRequest, ResourceKind
from applier.providers import gcp_compute
from schema.errors import CapacityError, ProviderError
from tests.cloud_support.worlds import PROJECT, GcpWorld, request
from tests.gcp_support.fake_gce import Fault, FirewallFault

ZONE_A = GcpWorld.placement
REPLICA = "resources: {ports: [10000-10010, 8080]}\nrun: echo serving\n"


def tag_of(req: LaunchRequest) -> str:
    return f"skyform-{req.skyform_id[:8]}"


def cluster(yaml: str, **fields: Any) -> LaunchRequest:
    return request(yaml, ZONE_A, address="cluster.nb", kind=ResourceKind.CLUSTER, **fields)


def cluster_with(ports: str | None, skyform_id: str | None = None) -> LaunchRequest:
    """Two nodes, with `resources.ports: <ports>` unless None."""
    resources = f"resources: {{ports: {ports}}}\n" if ports else ""
    ids = {"skyform_id": skyform_id} if skyform_id else {}
    return cluster(f"num_nodes: 2\n{resources}run: echo up\n", **ids)


def firewall_calls(gcp: GcpWorld) -> list[str]:
    return [c for c in gcp.fake.state.calls if c.split()[1].startswith("global/")]


def allowed(gcp: GcpWorld) -> list[str]:
    """The one rule's TCP ports (failing unless there is exactly one rule)."""
    [rule] = gcp.fake.firewalls()
    [tcp] = rule["allowed"]
    assert tcp["IPProtocol"] == "tcp"
    ports: list[str] = tcp["ports"]
    return ports


def test_a_service_replica_gets_one_rule_for_its_ports_before_its_instance(
    gcp: GcpWorld,
) -> None:
    provider = gcp.provider()
    req = request(
        REPLICA,
        ZONE_A,
        address="service.web",
        kind=ResourceKind.SERVICE_REPLICA,
        ports=(30001,),
        replica_id=1,
    )
    handle = provider.launch(req)

    [rule] = gcp.fake.firewalls()
    assert rule["name"] == f"{tag_of(req)}-ports"
    # The replica's assigned port and the task's, sorted; a range stays a range.
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["8080", "10000-10010", "30001"]}]
    assert rule["targetTags"] == [tag_of(req)]
    assert (rule["sourceRanges"], rule["direction"]) == (["0.0.0.0/0"], "INGRESS")
    assert rule["network"].endswith(f"/projects/{PROJECT}/global/networks/default")
    [instance] = gcp.live()
    assert instance["tags"]["items"] == ["skyform", tag_of(req)]
    assert handle.endpoint is not None and handle.endpoint.endswith(":30001")
    calls = gcp.fake.state.calls  # the rule exists before any instance is inserted
    assert calls.index("POST global/firewalls") < calls.index("POST zones/*/instances")
    assert calls.index("POST global/operations/*/wait") < calls.index("POST zones/*/instances")

    before = len(firewall_calls(gcp))
    assert provider.launch(req) == handle  # adopted: the rule as well, with one get
    assert firewall_calls(gcp)[before:] == ["GET global/firewalls/*"]
    assert len(gcp.fake.firewalls()) == 1 and len(gcp.live()) == 1

    provider.terminate(handle)
    assert gcp.fake.firewalls() == [] and gcp.live() == []
    provider.terminate(handle)  # the rule already gone is fine
    assert gcp.fake.count("DELETE global/firewalls/*") == 2


def test_a_cluster_rule_follows_its_ports_across_relaunches(gcp: GcpWorld) -> None:
    """Every node carries the tag; a relaunch that adopts the nodes patches the rule to the
    new ports, deletes it when the ports are gone, and makes it again when they come back."""
    provider = gcp.provider()
    first = cluster_with("8080")
    handle = provider.launch(first)
    assert allowed(gcp) == ["8080"]
    assert [i["tags"]["items"] for i in gcp.live()] == [["skyform", tag_of(first)]] * 2

    assert provider.launch(cluster_with("[8888, 8080]", first.skyform_id)) == handle
    assert allowed(gcp) == ["8080", "8888"]
    assert gcp.fake.count("PATCH global/firewalls/*") == 1
    assert gcp.fake.count("POST global/firewalls") == 1  # patched, never inserted twice

    assert provider.launch(cluster_with(None, first.skyform_id)) == handle
    assert gcp.fake.firewalls() == []

    assert provider.launch(cluster_with("8000-8002", first.skyform_id)) == handle
    assert allowed(gcp) == ["8000-8002"]
    assert gcp.fake.count("POST zones/*/instances") == 2  # the same two nodes throughout
    assert gcp.fake.count("POST zones/*/instances/*/setTags") == 0  # they had the tag

    provider.terminate(handle)
    assert gcp.fake.firewalls() == [] and gcp.live() == []


def test_a_resource_without_ports_makes_no_firewall_call_at_launch(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = cluster("run: echo up\n")
    handle = provider.launch(req)
    assert firewall_calls(gcp) == []
    [instance] = gcp.live()
    assert instance["tags"]["items"] == ["skyform", tag_of(req)]  # ready for ports later
    provider.terminate(handle)
    assert gcp.fake.firewalls() == [] and gcp.live() == []


def test_an_existing_rule_is_adopted_and_patched(gcp: GcpWorld) -> None:
    """A rule of the same name (a crashed launch's, edited by hand) is made right, not doubled."""
    req = cluster_with("8080")
    gcp.fake.put_firewall(
        PROJECT,
        {
            "name": f"{tag_of(req)}-ports",
            "allowed": [{"IPProtocol": "tcp", "ports": ["1-1024"]}],
            "targetTags": ["someone-else"],
            "sourceRanges": ["10.0.0.0/8"],
        },
    )
    provider = gcp.provider()
    handle = provider.launch(req)
    [rule] = gcp.fake.firewalls()
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["8080"]}]
    assert (rule["targetTags"], rule["sourceRanges"]) == ([tag_of(req)], ["0.0.0.0/0"])
    assert gcp.fake.count("POST global/firewalls") == 0
    assert gcp.fake.count("PATCH global/firewalls/*") == 1
    provider.terminate(handle)


def test_a_rule_made_by_another_launch_meanwhile_is_adopted(
    gcp: GcpWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The get says missing, the insert says it exists (409): the rule is read and patched."""
    req = cluster_with("8080")
    gcp.fake.put_firewall(
        PROJECT,
        {"name": f"{tag_of(req)}-ports", "allowed": [{"IPProtocol": "tcp", "ports": ["9"]}]},
    )
    real_get = gcp_compute.Compute.get_firewall
    seen: list[str] = []

    def get_missing_once(self: gcp_compute.Compute, name: str) -> dict[str, Any] | None:
        seen.append(name)
        return None if len(seen) == 1 else real_get(self, name)

    monkeypatch.setattr(gcp_compute.Compute, "get_firewall", get_missing_once)
    handle = gcp.provider().launch(req)
    assert allowed(gcp) == ["8080"] and len(seen) == 2
    assert gcp.fake.count("POST global/firewalls") == 1  # the 409
    gcp.provider().terminate(handle)
    assert gcp.fake.firewalls() == []


def test_adopted_instances_without_the_tag_get_it_and_a_missing_rule_is_remade(
    gcp: GcpWorld,
) -> None:
    """Instances launched before Skyform opened ports on GCP: the relaunch tags them (with the
    fingerprint GCE requires) and makes their rule; the next relaunch calls nothing more."""
    provider = gcp.provider()
    req = cluster_with("8080")
    handle = provider.launch(req)
    for instance in gcp.live():
        gcp.fake.set_tags(instance["zone"].rsplit("/", 1)[-1], instance["name"], ["skyform"])
    gcp.fake.drop_firewall(f"{tag_of(req)}-ports")

    assert provider.launch(req) == handle
    assert allowed(gcp) == ["8080"]
    assert [i["tags"]["items"] for i in gcp.live()] == [["skyform", tag_of(req)]] * 2
    assert gcp.fake.count("POST zones/*/instances/*/setTags") == 2

    assert provider.launch(req) == handle
    assert gcp.fake.count("POST zones/*/instances/*/setTags") == 2
    assert gcp.fake.count("POST global/firewalls") == 2
    provider.terminate(handle)


@pytest.mark.parametrize("in_operation", [False, True])
def test_a_firewall_quota_is_a_provider_error_that_names_the_fix(
    gcp: GcpWorld, in_operation: bool
) -> None:
    """Not a capacity error: the rule is project-wide, so failing over to another zone or
    region would meet the same quota. Nothing is inserted."""
    gcp.fake.state.firewall_faults.append(FirewallFault(in_operation=in_operation))
    req = cluster_with("8080")
    with pytest.raises(ProviderError) as err:
        gcp.provider().launch(req)
    message = str(err.value)
    assert f"firewall rule {tag_of(req)}-ports" in message
    assert "QUOTA_EXCEEDED" in message and "FIREWALLS" in message and "Quotas" in message
    assert not isinstance(err.value, CapacityError)
    assert gcp.fake.state.inserts == [] and gcp.live() == [] and gcp.fake.firewalls() == []


def test_a_stocked_out_launch_leaves_no_rule(gcp: GcpWorld) -> None:
    gcp.fake.state.faults.append(Fault(zone="us-central1-a"))
    with pytest.raises(CapacityError):
        gcp.provider().launch(cluster_with("8080"))
    assert gcp.fake.count("POST global/firewalls") == 1
    assert gcp.fake.firewalls() == [] and gcp.live() == []


def test_a_boot_failure_leaves_no_rule(gcp: GcpWorld) -> None:
    """Instances that end while booting are deleted by the launch, their rule with them."""
    provider = gcp.provider()
    req = cluster("resources: {ports: 8080}\nrun: echo up\n")
    real_insert = gcp_compute.Compute.insert

    def insert_then_lose(
        self: gcp_compute.Compute, zone: str, body: dict[str, Any], p: Any
    ) -> None:
        real_insert(self, zone, body, p)
        gcp.fake.preempt(zone, body["name"], delete=True)  # gone before it ever ran

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gcp_compute.Compute, "insert", insert_then_lose)
        with pytest.raises(CapacityError):
            provider.launch(req)
    assert gcp.fake.firewalls() == [] and gcp.live() == []
