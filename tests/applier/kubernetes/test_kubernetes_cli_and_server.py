"""`skyform show-gpus --infra kubernetes`, the provider built from skyform.yaml-shaped settings
through the registry and feeding the planner's live offerings, and the fake API server itself
speaking real Kubernetes to the official client and to kubectl."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from kubernetes import client, config

from applier.providers import registry
from reconciler.cli import main
from reconciler.context import live_offerings
from tests.k8s_server import FakeApiServer, write_kubeconfig
from tests.k8s_server.harness import GPU_JOB, Kube, request


def test_show_gpus_counts_total_and_free_per_gpu_type(kube: Kube, tmp_path: Path) -> None:
    provider = kube.provider()
    provider.launch(request(GPU_JOB, accelerator="H100", count=2))
    cli = CliRunner(env={"SKYFORM_HOME": str(tmp_path / "h")})

    out = cli.invoke(main, ["show-gpus", "--infra", "kubernetes", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["accelerator"]: r for r in json.loads(out.output)}
    assert set(rows) == {"H100", "T4"} and rows["H100"]["context"] == "ctx-a"
    assert (rows["H100"]["total"], rows["H100"]["free"], rows["H100"]["nodes"]) == (8, 6, 1)
    assert (rows["T4"]["total"], rows["T4"]["free"]) == (1, 1)

    text = cli.invoke(main, ["show-gpus", "H100", "--infra", "k8s/ctx-a"])
    assert text.exit_code == 0, text.output
    assert "H100" in text.output and "T4" not in text.output
    assert (
        cli.invoke(main, ["show-gpus", "--infra", "k8s/ctx-b", "--format", "json"]).output.strip()
        == "[]"
    )

    missing = cli.invoke(main, ["show-gpus", "--infra", "k8s/prod"])
    assert missing.exit_code != 0 and "'prod'" in missing.output


def test_the_registry_builds_it_from_settings_and_the_planner_sees_priced_offerings(
    kube: Kube, tmp_path: Path
) -> None:
    pricing = {"cpu": 0.0, "memory": 0.0, "accelerators": {"T4": 0.35}}
    contexts = [
        {"context": "ctx-a", "namespace": None, "pricing": pricing},
        {"context": "ctx-b", "namespace": None, "pricing": None},
    ]
    settings = {"kubernetes": {"contexts": contexts}}
    assert registry.check("kubernetes", settings) is None
    provider = registry.make_provider("kubernetes", tmp_path, settings)

    offers = live_offerings({"kubernetes": provider})

    by_place = {(o.region, o.accelerator): o for o in offers}
    assert by_place[("ctx-a", "T4")].hourly_price == pytest.approx(0.35)
    assert by_place[("ctx-b", None)].nodes == 2 and by_place[("ctx-b", None)].hourly_price == 0
    bad = {"kubernetes": {"contexts": [{"context": "nope"}]}}
    assert "'nope'" in (registry.check("kubernetes", bad) or "")


def test_the_fake_speaks_kubernetes_to_the_official_client(tmp_path: Path) -> None:
    api = FakeApiServer().start()
    try:
        v1 = client.CoreV1Api(
            config.new_client_from_config(config_file=str(_kubeconfig(api, tmp_path)))
        )
        pod = {"metadata": {"name": "p", "labels": {"app": "x"}},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
        created = v1.create_namespaced_pod("default", pod)
        assert created.metadata.uid and created.metadata.resource_version
        with pytest.raises(client.ApiException) as dup:
            v1.create_namespaced_pod("default", pod)
        assert dup.value.status == 409
        with pytest.raises(client.ApiException) as missing:
            v1.read_namespaced_pod("nope", "default")
        assert missing.value.status == 404
        with pytest.raises(client.ApiException) as no_ns:
            v1.create_namespaced_pod("ml", pod)
        assert no_ns.value.status == 404
        assert [
            p.metadata.name
            for p in v1.list_namespaced_pod("default", label_selector="app in (x,y)").items
        ] == ["p"]
        assert v1.list_namespaced_pod("default", label_selector="app!=x").items == []
        # no node: the scheduler says so, as a real one would
        [cond] = v1.read_namespaced_pod("p", "default").status.conditions
        assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
        stale = v1.read_namespaced_pod("p", "default")
        v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"b": "1"}}})
        with pytest.raises(client.ApiException) as conflict:
            v1.replace_namespaced_pod("p", "default", stale)
        assert conflict.value.status == 409
        v1.delete_namespaced_pod("p", "default")
        assert v1.list_pod_for_all_namespaces().items == []
    finally:
        api.stop()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kubectl_can_list_what_the_fake_serves(tmp_path: Path) -> None:
    api = FakeApiServer().start()
    try:
        api.cluster.add_node("gpu-1", gpus=4)
        pod = {
            "metadata": {"name": "web", "labels": {"app": "w"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
        api.store.create("pods", "default", pod)
        api.cluster.schedule("default", "web")
        kubectl = ["kubectl", f"--kubeconfig={_kubeconfig(api, tmp_path)}", "--request-timeout=10s"]
        nodes = subprocess.run([*kubectl, "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert nodes.returncode == 0, nodes.stderr
        assert nodes.stdout.split() == ["node/gpu-1"]
        jsonpath = "jsonpath={.items[*].spec.nodeName}"
        pods = subprocess.run([*kubectl, "get", "pods", "-l", "app=w", "-o", jsonpath],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert pods.returncode == 0, pods.stderr
        assert pods.stdout == "gpu-1"
    finally:
        api.stop()


def _kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / f"kc-{api.url.rsplit(':', 1)[1]}", {"fake": api.url})
