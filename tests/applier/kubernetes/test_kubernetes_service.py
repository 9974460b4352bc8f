"""A service's replicas in a cluster are fronted by one ClusterIP Service per namespace as
well as by Skyform's load balancer: made with the first placed replica, kept while any replica
is left, deleted with the last one."""

from __future__ import annotations

from typing import Any

import pytest

from applier.provider import Handle, ResourceKind
from schema.errors import CapacityError
from tests.k8s_server.harness import Kube, request

SERVICE = "service:\n  readiness_probe: /health\n  ports: 9000\nrun: serve\n"


def _replica(kube: Kube, context: str = "ctx-b", port: int = 9000, **kw: Any) -> Handle:
    req = request(
        SERVICE, context, address="service.api", kind=ResourceKind.SERVICE_REPLICA,
        ports=(port,), **kw,
    )  # fmt: skip
    return kube.provider().launch(req)


def _services(kube: Kube, context: str = "ctx-b") -> list[dict[str, Any]]:
    return kube.server(context).store.list("services", "default")


def test_replicas_share_one_cluster_ip_service_that_goes_with_the_last(kube: Kube) -> None:
    first = _replica(kube, port=9000)
    [service] = _services(kube)
    assert service["metadata"]["name"] == "service-api"
    spec = service["spec"]
    assert spec["type"] == "ClusterIP" and spec.get("clusterIP") != "None"
    port = spec["ports"][0]
    assert (port["port"], port["targetPort"]) == (9000, "serve")
    selector = ",".join(f"{k}={v}" for k, v in sorted(spec["selector"].items()))
    [pod] = kube.pods("ctx-b", selector)  # it selects the replica's pod
    assert pod["spec"]["containers"][0]["ports"] == [{"containerPort": 9000, "name": "serve"}]

    second = _replica(kube, port=9001)  # another port: the named targetPort still reaches it
    assert [s["metadata"]["name"] for s in _services(kube)] == ["service-api"]
    assert len(kube.pods("ctx-b", selector)) == 2
    assert _services(kube)[0]["metadata"]["uid"] == service["metadata"]["uid"]  # kept

    kube.provider().terminate(first)
    assert [s["metadata"]["name"] for s in _services(kube)] == ["service-api"]
    assert len(kube.pods("ctx-b", selector)) == 1

    kube.provider().terminate(second)
    assert _services(kube) == [] and kube.pods("ctx-b") == []
    kube.provider().terminate(second)  # terminating again is fine


def test_each_cluster_fronts_its_own_replicas(kube: Kube) -> None:
    a = _replica(kube, "ctx-a")
    b = _replica(kube, "ctx-b")
    assert [s["metadata"]["name"] for s in _services(kube, "ctx-a")] == ["service-api"]
    assert [s["metadata"]["name"] for s in _services(kube, "ctx-b")] == ["service-api"]
    kube.provider().terminate(a)
    assert _services(kube, "ctx-a") == [] and len(_services(kube, "ctx-b")) == 1
    kube.provider().terminate(b)
    assert _services(kube, "ctx-b") == []


def test_jobs_and_unplaced_replicas_get_no_cluster_ip_service(kube: Kube) -> None:
    kube.provider().launch(request("run: x\n", "ctx-b"))
    assert _services(kube) == []
    with pytest.raises(CapacityError):
        _replica(kube, cpus=64)  # no node has 64 CPUs
    assert _services(kube) == [] and kube.pods("ctx-b", "skyform.io/kind=service-replica") == []
