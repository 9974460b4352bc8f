"""The Kubernetes provider over the real `kubernetes` client against the in-repo fake API
server: GPU placement, gang scheduling, job states from pods, eviction, clusters, services,
capacity, one list call per context, adoption, exec and logs, and `check()`."""

from __future__ import annotations

import http.server
import threading

import pytest

from applier.provider import Handle, JobState, Provider, ResourceKind, ResourceStatus, Selector
from applier.providers import kubernetes as k8s
from applier.serve.probe import probe_once
from schema.errors import CapacityError, ProviderError
from tests.k8s_server.harness import GPU_JOB, Kube, env_of, request


def pod_names(handle: Handle) -> list[str]:
    prefix = handle.resource_id.partition("/")[2]
    return [f"{prefix}-{r}" for r in range(handle.num_nodes)]


def finish_all(kube: Kube, handle: Handle, code: int = 0, stage: str = "run") -> None:
    server = kube.server(handle.placement.region or "")
    for name in pod_names(handle):
        server.cluster.finish("default", name, code, stage)


def test_implements_the_protocol(kube: Kube) -> None:
    assert isinstance(kube.provider(), Provider)


def test_a_gpu_job_lands_on_the_node_with_that_gpu(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(request(GPU_JOB, accelerator="H100", count=2))

    [pod] = kube.pods("ctx-a", f"skyform.io/id={handle.skyform_id}")
    assert pod["spec"]["nodeName"] == "gpu-h100"
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] == "1000m"
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = term["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (expr["key"], expr["values"]) == ("nvidia.com/gpu.product", ["NVIDIA-H100-80GB-HBM3"])
    env = env_of(pod)
    assert env["SKYPILOT_NUM_GPUS_PER_NODE"] == "2"
    assert env["SKYPILOT_NODE_RANK"] == "0" and env["SKYPILOT_NUM_NODES"] == "1"
    assert env["SKYFORM_RUN"] == "python train.py"
    assert pod["metadata"]["labels"]["skyform.io/address"] == "job.train"
    assert container["image"] == "python:3.11-slim"

    t4 = provider.launch(request(GPU_JOB.replace("H100:2", "T4:1"), accelerator="T4", count=1))
    [pod] = kube.pods("ctx-a", f"skyform.io/id={t4.skyform_id}")
    assert pod["spec"]["nodeName"] == "gpu-t4"  # by the GKE label, untainted node


def test_a_gpu_type_no_node_has_is_a_capacity_error_and_creates_nothing(kube: Kube) -> None:
    req = request(GPU_JOB.replace("H100:2", "A100:1"), accelerator="A100", count=1)
    with pytest.raises(CapacityError) as err:
        kube.provider().launch(req)
    assert err.value.placement == req.placement and "A100" in str(err.value)
    assert kube.pods("ctx-a") == []


def test_a_job_runs_to_success_and_its_logs_are_fetched(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(request("resources:\n  image_id: docker:ubuntu:22.04\nrun: echo hi\n"))
    assert provider.job_status(handle) == JobState.RUNNING
    [seen] = provider.observe(Selector(address="job.train"))
    assert seen.handle == handle and seen.status == ResourceStatus.UP
    stored = Handle.from_dict(handle.as_dict())  # as the state store keeps it
    assert stored == handle and provider.job_status(stored) == JobState.RUNNING
    assert kube.pods()[0]["spec"]["containers"][0]["image"] == "ubuntu:22.04"

    kube.a.cluster.logs[("default", pod_names(handle)[0])] = "hi\n"
    finish_all(kube, handle)
    assert provider.job_status(handle) == JobState.SUCCEEDED
    [log] = provider.log_paths(handle)
    assert log.stage == "run" and log.path.read_text() == "hi\n"

    provider.terminate(handle)
    assert provider.observe() == [] and kube.pods() == []
    provider.terminate(handle)  # already gone: still fine
    assert provider.job_status(handle) == JobState.NODE_LOST
    assert provider.log_paths(handle)[0].path.read_text() == "hi\n"  # the copy outlives the pod


@pytest.mark.parametrize(
    ("code", "stage", "state"),
    [(3, "run", JobState.FAILED), (1, "setup", JobState.FAILED_SETUP)],
)
def test_a_non_zero_exit_is_the_users_failure(
    kube: Kube, code: int, stage: str, state: JobState
) -> None:
    provider = kube.provider()
    handle = provider.launch(request("setup: pip install x\nrun: exit 3\n"))
    finish_all(kube, handle, code, stage)
    [seen] = provider.observe()
    assert seen.job == state and not seen.job.needs_recovery
    assert (seen.nodes[0].exit_code, seen.nodes[0].failed_stage) == (code, stage)


def test_a_two_node_gang_that_fits_gets_a_headless_service_and_peer_names(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(request("run: torchrun train.py\n", "ctx-b", num_nodes=2, cpus=12))

    pods = kube.pods("ctx-b")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["big-1", "big-2"]
    prefix = handle.resource_id.partition("/")[2]
    service = kube.b.store.get("services", "default", prefix)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"skyform.io/resource": prefix}
    for rank, pod in enumerate(sorted(pods, key=lambda p: p["metadata"]["name"])):
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"{prefix}-{rank}", prefix)
        assert env_of(pod)["SKYFORM_NODE_HOSTS"] == f"{prefix}-0.{prefix} {prefix}-1.{prefix}"
        assert env_of(pod)["SKYPILOT_NODE_RANK"] == str(rank)

    provider.terminate(handle)
    assert kube.pods("ctx-b") == [] and kube.b.store.list("services", "default") == []


def test_with_a_kueue_queue_the_pods_form_one_pod_group(kube: Kube) -> None:
    handle = kube.provider("ctx-b", queue="team-a").launch(
        request("run: x\n", "ctx-b", num_nodes=2)
    )
    for pod in kube.pods("ctx-b"):
        labels = pod["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == handle.resource_id.partition("/")[2]
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"


def test_a_gang_that_does_not_fit_is_torn_down_and_raises_capacity_error(kube: Kube) -> None:
    # ctx-a has one untainted node with 12 CPUs free (the T4 node); the H100 node is tainted
    req = request("run: torchrun train.py\n", "ctx-a", num_nodes=2, cpus=12)
    with pytest.raises(CapacityError) as err:
        kube.provider().launch(req)
    assert err.value.placement == req.placement
    assert "Insufficient" in str(err.value) or "not scheduled" in str(err.value)
    assert kube.pods("ctx-a") == []
    assert kube.a.store.list("services", "default") == []
    reasons = {e["reason"] for e in kube.a.store.list("events", "default")}
    assert "FailedScheduling" in reasons  # what the scheduler said, as a real one would


def test_pods_stuck_pending_past_the_timeout_are_a_capacity_error(kube: Kube) -> None:
    kube.a.cluster.auto_run = False
    provider = kube.provider("ctx-a", schedule_timeout_s=0.3, wait_for_autoscaler=True)
    with pytest.raises(CapacityError, match="Insufficient"):
        provider.launch(request("run: x\n", num_nodes=2, cpus=12))  # waits the timeout out
    assert kube.pods("ctx-a") == []


@pytest.mark.parametrize(
    ("reason", "state"), [("Evicted", JobState.NODE_LOST), ("Preempting", JobState.PREEMPTED)]
)
def test_an_evicted_or_preempted_pod_needs_recovery(
    kube: Kube, reason: str, state: JobState
) -> None:
    provider = kube.provider()
    handle = provider.launch(request("run: python train.py\n", "ctx-b", num_nodes=2))
    kube.b.cluster.evict("default", pod_names(handle)[1], reason)
    kube.b.cluster.finish("default", pod_names(handle)[0], 1)  # the peer dies of it
    [seen] = provider.observe()
    assert seen.job == state and seen.job.needs_recovery
    assert seen.status == ResourceStatus.DEGRADED
    assert [n.alive for n in seen.nodes] == [True, False]


def test_a_node_lost_with_its_pod_is_node_lost(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(request(GPU_JOB, accelerator="H100", count=2))
    kube.a.cluster.lose_node("gpu-h100")
    assert provider.job_status(handle) == JobState.NODE_LOST


def test_a_cluster_succeeds_when_its_run_passed_and_cannot_be_stopped(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(
        request("run: echo up\n", address="cluster.dev", kind=ResourceKind.CLUSTER)
    )
    [pod] = kube.pods()
    probe = pod["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert "run.exit" in probe[-1] and env_of(pod)["SKYFORM_KEEP"] == "1"
    assert provider.job_status(handle) == JobState.RUNNING

    kube.a.cluster.set_ready("default", pod["metadata"]["name"])  # the probe saw exit 0
    assert provider.job_status(handle) == JobState.SUCCEEDED
    with pytest.raises(ProviderError, match="cannot be stopped"):
        provider.stop(handle)


def test_run_executes_in_every_pod_and_keeps_an_exec_log(kube: Kube) -> None:
    provider = kube.provider()
    handle = provider.launch(request("run: x\n", "ctx-b", num_nodes=2))
    seen: list[tuple[str, list[str]]] = []

    def handler(pod: dict[str, object], command: list[str]) -> tuple[int, str]:
        name = str(pod["metadata"]["name"])  # type: ignore[index]
        seen.append((name, command))
        return (4 if name.endswith("-1") else 0), f"out of {name}\n"

    kube.b.cluster.exec_handler = handler
    assert provider.run(handle, "nvidia-smi", env={"A": "b c"}) == 4
    assert [name for name, _ in seen] == pod_names(handle)
    assert "export A='b c'" in seen[0][1][-1] and "nvidia-smi" in seen[0][1][-1]
    assert provider.run(handle, "true", node=0) == 0
    logs = {(f.rank, f.stage): f.path.read_text() for f in provider.log_paths(handle)}
    assert logs[(1, "exec")] == f"$ nvidia-smi\nout of {pod_names(handle)[1]}\n"

    finish_all(kube, handle)
    with pytest.raises(ProviderError):
        provider.run(handle, "true")  # finished pods run nothing


def test_relaunching_the_same_skyform_id_adopts(kube: Kube) -> None:
    provider = kube.provider()
    req = request("run: x\n", "ctx-b", num_nodes=2)
    first = provider.launch(req)
    kube.b.store.delete("pods", "default", pod_names(first)[1])  # a launch crashed half-way
    again = provider.launch(req)
    assert again == first
    assert len(kube.pods("ctx-b")) == 2 and len(provider.observe()) == 1


def test_observe_makes_one_list_call_per_context(kube: Kube) -> None:
    provider = kube.provider()
    made = [provider.launch(request("run: x\n", ctx, address=f"job.j{i}")) for i, ctx in
            enumerate(["ctx-a", "ctx-a", "ctx-b", "ctx-b", "ctx-b"])]  # fmt: skip
    before = (len(kube.a.requests), len(kube.b.requests))

    seen = provider.observe()

    assert {r.handle for r in seen} == set(made)
    assert kube.a.calls()[before[0] :] == ["/api/v1/namespaces/default/pods"]
    assert kube.b.calls()[before[1] :] == ["/api/v1/namespaces/default/pods"]
    assert [r.handle for r in provider.observe(Selector(address="job.j3"))] == [made[3]]


def test_capacity_is_free_per_node_shape_minus_running_pods(kube: Kube) -> None:
    provider = kube.provider(pricing={"cpu": 0.01, "memory": 0.001, "accelerators": {"H100": 2.0}})
    before = {(c.region, c.accelerator): c for c in provider.capacity()}
    assert before[("ctx-a", "H100")].accelerator_count == 8
    assert before[("ctx-a", "H100")].hourly_price == pytest.approx(2.0 + 0.04 + 0.016)
    assert before[("ctx-b", None)].nodes == 2 and before[("ctx-b", None)].cpus == 16

    handle = provider.launch(request(GPU_JOB, accelerator="H100", count=2, cpus=4, memory_gib=16))
    after = {(c.region, c.accelerator): c for c in provider.capacity()}
    assert after[("ctx-a", "H100")].accelerator_count == 6
    assert after[("ctx-a", "H100")].cpus == 28 and after[("ctx-a", "H100")].memory_gib == 240

    finish_all(kube, handle)  # a finished pod holds nothing
    assert {(c.region, c.accelerator): c for c in provider.capacity()} == before


def test_a_service_replica_becomes_ready_and_takes_traffic(kube: Kube) -> None:
    kube.b.cluster.pod_ip = "127.0.0.1"  # the fake's pods "run" on this machine
    server = _http_server()
    port = server.server_address[1]
    yaml = "service:\n  readiness_probe:\n    path: /health\n    timeout_seconds: 3\nrun: serve\n"
    handle = kube.provider().launch(
        request(yaml, "ctx-b", address="service.api", kind=ResourceKind.SERVICE_REPLICA,
                ports=(port,))
    )  # fmt: skip
    try:
        assert handle.endpoint == f"127.0.0.1:{port}"
        [pod] = kube.pods("ctx-b")
        probe = pod["spec"]["containers"][0]["readinessProbe"]
        assert probe["httpGet"] == {"path": "/health", "port": port}
        assert probe["timeoutSeconds"] == 3
        assert env_of(pod)["PORT"] == str(port)
        assert not pod["status"]["containerStatuses"][0]["ready"]

        task = request(yaml).task
        assert task.service is not None
        assert probe_once(f"http://{handle.endpoint}", task.service.readiness_probe).ok
        kube.b.cluster.set_ready("default", pod["metadata"]["name"])
        assert kube.pods("ctx-b")[0]["status"]["containerStatuses"][0]["ready"]
    finally:
        server.shutdown()
        server.server_close()


def _http_server() -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


def test_check_names_a_missing_context_and_the_ones_there_are(kube: Kube) -> None:
    assert k8s.check({"contexts": [{"context": "ctx-b"}]}) is None
    assert k8s.check({}) is None  # the current context
    reason = k8s.check({"contexts": [{"context": "prod"}]})
    assert reason is not None
    assert "'prod'" in reason and "ctx-a, ctx-b" in reason and "KUBECONFIG" in reason


def test_check_without_any_kubeconfig_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("empty-home")))
    reason = k8s.check({})
    assert reason is not None and "KUBECONFIG" in reason
