"""A cluster relaunched (same Skyform id) with a changed setup, envs or workdir re-runs setup in
its running pods through exec, as `sky launch` on an existing cluster does and as the local
provider does: the pods are kept (same uids), the workdir is copied again, the new setup runs
with the new envs, and the pods record the new setup hash, which observe() reports. Execs run
for real (tests.k8s_server.pod_exec) in a home and state directory per pod; the first setup is
run by the real bootstrap, since the fake kubelet runs no container."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from applier.provider import Handle, LaunchRequest, ResourceKind
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes import KubernetesProvider
from applier.providers.local_files import setup_hash
from schema.errors import ProviderError
from tests.k8s_server.harness import Kube, env_of, request
from tests.k8s_server.pod_exec import PATH, pod_home, processes_in

SETUP = (
    'echo "$GREETING ${OLD:-none} $SKYPILOT_SETUP_NODE_RANK $(cat version.txt) TAG" > ~/setup.out'
)


def cluster(repo: Path, tag: str, envs: str, skyform_id: str | None = None) -> LaunchRequest:
    """A two-pod cluster over `repo/app` whose setup writes `~/setup.out` in each pod."""
    yaml = (
        f"num_nodes: 2\nworkdir: app\nenvs: {{{envs}}}\nsetup: '{SETUP.replace('TAG', tag)}'\n"
        "run: echo up\n"
    )
    req = request(yaml, "ctx-b", address="cluster.dev", kind=ResourceKind.CLUSTER, num_nodes=2)
    return dataclasses.replace(req, base_dir=repo, skyform_id=skyform_id or req.skyform_id)


def workdir(tmp_path: Path, version: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True, exist_ok=True)
    (repo / "app" / "version.txt").write_text(f"{version}\n")
    return repo


def boot(kube: Kube, root: Path, handle: Handle) -> None:
    """What each pod's container does first: the real bootstrap (setup, then an empty run)."""
    for pod in kube.pods("ctx-b", pods.selector(handle.skyform_id)):
        env = env_of(pod) | {"SKYFORM_NODE_HOSTS": "", "SKYFORM_RUN": "", "SKYFORM_KEEP": "0"}
        home = pod_home(root, pod)
        env |= {"PATH": PATH, "HOME": str(home), "SKYFORM_STATE_DIR": str(home.parent / "state")}
        out = subprocess.run(
            ["/bin/sh", "-c", pods.BOOTSTRAP], env=env, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr


def outputs(kube: Kube, root: Path, handle: Handle) -> list[str]:
    found = sorted(kube.pods("ctx-b", pods.selector(handle.skyform_id)), key=_name)
    return [(pod_home(root, p) / "setup.out").read_text() for p in found]


def uids(kube: Kube, handle: Handle) -> list[str]:
    found = sorted(kube.pods("ctx-b", pods.selector(handle.skyform_id)), key=_name)
    return [p["metadata"]["uid"] for p in found]


def recorded(kube: Kube, handle: Handle) -> set[str]:
    found = kube.pods("ctx-b", pods.selector(handle.skyform_id))
    return {json.loads(p["metadata"]["annotations"][pods.META])["setup_hash"] for p in found}


def _name(pod: dict[str, object]) -> str:
    return str(pod["metadata"]["name"])  # type: ignore[index]


def observed_hash(provider: KubernetesProvider) -> str | None:
    [seen] = provider.observe()
    return seen.setup_hash


def execs(kube: Kube) -> int:
    return len(kube.b.calls(path_suffix="/exec"))


def patches(kube: Kube) -> int:
    return len(kube.b.calls("PATCH"))


@pytest.fixture
def root(kube: Kube, tmp_path: Path) -> Path:
    root = tmp_path / "pods"
    kube.b.cluster.exec_runner = processes_in(root)
    return root


def test_a_changed_setup_reruns_in_the_same_running_pods(
    kube: Kube, root: Path, tmp_path: Path
) -> None:
    provider = kube.provider()
    first = cluster(workdir(tmp_path, "w1"), "v1", "GREETING: hello, OLD: x")
    handle = provider.launch(first)
    boot(kube, root, handle)
    assert outputs(kube, root, handle) == ["hello x 0 w1 v1\n", "hello x 1 w1 v1\n"]
    assert recorded(kube, handle) == {setup_hash(first)}
    assert observed_hash(provider) == setup_hash(first)
    before = uids(kube, handle)

    second = cluster(workdir(tmp_path, "w2"), "v2", "GREETING: bonjour", handle.skyform_id)
    assert setup_hash(second) != setup_hash(first)
    assert provider.launch(second) == handle

    assert uids(kube, handle) == before  # adopted, not recreated
    # The new setup ran in every pod, over the workdir copied again, with the new envs (OLD
    # is gone from them, though the pods were made with it) and SkyPilot's variables.
    assert outputs(kube, root, handle) == ["bonjour none 0 w2 v2\n", "bonjour none 1 w2 v2\n"]
    assert recorded(kube, handle) == {setup_hash(second)}
    assert observed_hash(provider) == setup_hash(second)
    logs = {(f.rank, f.stage): f.path for f in provider.log_paths(handle)}
    assert "v2" in logs[(1, "setup")].read_text()

    # Unchanged: nothing runs again (only the check that the files are in, one per pod).
    (execs_before, patches_before) = (execs(kube), patches(kube))
    for out in root.glob("*/home/setup.out"):
        out.unlink()
    assert provider.launch(second) == handle
    assert execs(kube) == execs_before + 2 and patches(kube) == patches_before
    assert not list(root.glob("*/home/setup.out"))


def test_an_unchanged_relaunch_execs_nothing(kube: Kube, root: Path) -> None:
    provider = kube.provider()
    req = request(
        "setup: echo once > ~/setup.out\nrun: echo up\n", "ctx-b", address="cluster.dev",
        kind=ResourceKind.CLUSTER,
    )  # fmt: skip
    handle = provider.launch(req)
    assert execs(kube) == 0  # the bootstrap runs setup, not an exec
    asked = (execs(kube), patches(kube))
    assert provider.launch(req) == handle
    assert (execs(kube), patches(kube)) == asked
    assert observed_hash(provider) == setup_hash(req)


def test_a_failing_new_setup_is_reported_and_the_old_hash_kept(
    kube: Kube, root: Path, tmp_path: Path
) -> None:
    provider = kube.provider()
    repo = workdir(tmp_path, "w1")
    first = cluster(repo, "v1", "GREETING: hello")
    handle = provider.launch(first)
    boot(kube, root, handle)
    before = uids(kube, handle)

    broken = dataclasses.replace(
        first, task=first.task.model_copy(update={"setup": "echo broken >&2; exit 3"})
    )
    with pytest.raises(ProviderError, match=r"setup failed with exit code 3 on node 0; see .*"):
        provider.launch(broken)
    assert uids(kube, handle) == before  # the running cluster is left as it was
    assert recorded(kube, handle) == {setup_hash(first)}
    assert observed_hash(provider) == setup_hash(first)
    logs = {(f.rank, f.stage): f.path for f in provider.log_paths(handle)}
    assert "broken" in logs[(0, "setup")].read_text()

    fixed = cluster(repo, "v3", "GREETING: hello", handle.skyform_id)
    provider.launch(fixed)  # the next apply tries again
    assert outputs(kube, root, handle) == ["hello none 0 w1 v3\n", "hello none 1 w1 v3\n"]
    assert observed_hash(provider) == setup_hash(fixed)


def test_a_job_is_never_set_up_again_in_place(kube: Kube, root: Path) -> None:
    provider = kube.provider()
    req = request("setup: echo a\nrun: x\n", "ctx-b")
    handle = provider.launch(req)
    again = dataclasses.replace(req, task=req.task.model_copy(update={"setup": "echo b"}))
    assert provider.launch(again) == handle
    assert execs(kube) == 0 and not root.exists()
