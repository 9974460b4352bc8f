"""A service's replicas in a cluster are fronted by one ClusterIP Service per namespace as
well as by Skyform's load balancer: made with the first placed replica, kept while any replica
is left (even one launched while the last old one is being terminated), deleted with the last
one, and on the ports of the latest version launched."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from applier.provider import Handle, LaunchRequest, ResourceKind
from schema.errors import CapacityError
from tests.k8s_server.harness import Kube, request

SERVICE = "service:\n  readiness_probe: /health\n  ports: {port}\nrun: serve\n"


def _request(
    context: str = "ctx-b", port: int = 9000, service_port: int = 9000, **kw: Any
) -> LaunchRequest:
    return request(
        SERVICE.format(port=service_port), context, address="service.api",
        kind=ResourceKind.SERVICE_REPLICA, ports=(port,), **kw,
    )  # fmt: skip


def _replica(kube: Kube, context: str = "ctx-b", port: int = 9000, **kw: Any) -> Handle:
    return kube.provider().launch(_request(context, port, **kw))


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
    [left] = kube.pods("ctx-b", selector)  # it selects the replica left
    assert left["metadata"]["labels"]["skyform.io/id"] == second.skyform_id

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


def test_a_new_version_on_another_port_patches_the_services_port(kube: Kube) -> None:
    _replica(kube, port=31000)  # version 1: the service's port 9000
    [before] = _services(kube)
    _replica(kube, port=31001, service_port=9100)  # version 2 of the service: port 9100
    [after] = _services(kube)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same Service, patched
    assert after["spec"]["ports"] == [
        {"name": "serve", "port": 9100, "targetPort": "serve", "protocol": "TCP"}
    ]  # the old port replaced, not kept beside it (a strategic merge would keep both)


def test_a_replica_launched_while_the_last_old_one_terminates_keeps_the_service(
    kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving: the old replica's terminate has found no other replica and sends the
    delete of the Service; before the API server serves it, a new version's replica is placed
    (its pods made, the Service claimed on its port). The Service must survive for it."""
    old = _replica(kube, port=31000)
    new_req = _request(port=31001, service_port=9100)
    launched: list[Handle] = []
    record = kube.b.record

    def launch_new() -> None:
        launched.append(kube.provider().launch(new_req))

    def hook(method: str, path: str, query: dict[str, list[str]]) -> None:
        if method == "DELETE" and "/services/" in path and not hooked:
            hooked.append(path)
            racer = threading.Thread(target=launch_new)
            racer.start()
            racer.join(timeout=30)
        record(method, path, query)

    hooked: list[str] = []
    monkeypatch.setattr(kube.b, "record", hook)
    kube.provider().terminate(old)
    assert hooked and launched  # the race did happen as described

    [service] = _services(kube)
    selector = ",".join(f"{k}={v}" for k, v in sorted(service["spec"]["selector"].items()))
    [pod] = kube.pods("ctx-b", selector)
    assert pod["metadata"]["labels"]["skyform.io/id"] == new_req.skyform_id
    assert service["spec"]["ports"][0]["port"] == 9100

    kube.provider().terminate(launched[0])
    assert _services(kube) == [] and kube.pods("ctx-b") == []
