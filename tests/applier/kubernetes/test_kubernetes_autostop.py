"""Autostop on Kubernetes with the real kubernetes client against the fake API server: activity
is the launch and the pods' `skyform.dev/last-active` annotation, which `skyform ssh`, `exec`
and `port-forward` (through `Interactive.touch`, as the CLI calls it) and provider runs write;
observe() reads it from the pod list it fetches anyway, and `applier.autostop.enforce` tears
down (`down: true`) only clusters idle for their autostop minutes since the later of the two.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from applier.autostop import Stopped, enforce
from applier.interactive import for_provider
from applier.provider import Handle, LaunchRequest, ObservedResource, ResourceKind
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes import KubernetesProvider
from tests.k8s_server.harness import Kube, request
from tests.waiting import wait_for

UP_FOR_S = 3600.0  # the clusters here were launched an hour ago


def cluster(name: str, autostop: str | None, skyform_id: str | None = None) -> LaunchRequest:
    """A two-pod cluster with `autostop` (none: without one), a new one or `skyform_id`."""
    resources = f"resources: {{autostop: {autostop}}}\n" if autostop else ""
    yaml = f"num_nodes: 2\n{resources}run: echo up\n"
    req = request(yaml, address=f"cluster.{name}", kind=ResourceKind.CLUSTER, num_nodes=2)
    return replace(req, skyform_id=skyform_id) if skyform_id else req


def launch(provider: KubernetesProvider, kube: Kube, name: str, autostop: str) -> Handle:
    """A two-pod cluster with `autostop`, whose launch is recorded an hour back (the launch
    record is what observe() reads as the launch time) and whose run has ended (its pods'
    readiness probe passed), so it is idle rather than busy."""
    handle = provider.launch(cluster(name, autostop))
    for pod in kube.pods("ctx-a", pods.selector(handle.skyform_id)):
        meta = pod["metadata"]
        record = json.loads(meta["annotations"][pods.META])
        record["launched_at"] -= UP_FOR_S
        patch = {"metadata": {"annotations": {pods.META: json.dumps(record)}}}
        kube.a.store.update("pods", meta["namespace"], meta["name"], patch, "spec")
        wait_for(lambda p=meta: running(kube, p), f"pod {meta['name']} running")
        kube.a.cluster.set_ready(meta["namespace"], meta["name"])
    return handle


def running(kube: Kube, meta: dict[str, str]) -> bool:
    pod = kube.a.store.get("pods", meta["namespace"], meta["name"])
    return bool((pod.get("status") or {}).get("containerStatuses"))


def observe(provider: KubernetesProvider) -> dict[str, ObservedResource]:
    return {o.handle.address: o for o in provider.observe()}


def pods_of(kube: Kube, handle: Handle) -> list[str]:
    return [p["metadata"]["name"] for p in kube.pods("ctx-a", pods.selector(handle.skyform_id))]


def records(kube: Kube, handle: Handle) -> list[dict[str, object]]:
    """Each pod's launch record, as the API server holds it."""
    found = kube.pods("ctx-a", pods.selector(handle.skyform_id))
    return [json.loads(p["metadata"]["annotations"][pods.META]) for p in found]


def relaunch(provider: KubernetesProvider, kube: Kube, handle: Handle, autostop: str | None) -> int:
    """Launch `handle`'s cluster again (same Skyform id) with `autostop`: the same pods are
    adopted. How many were patched."""
    uids = uids_of(kube, handle)
    asked = len(kube.a.requests)
    again = provider.launch(cluster(handle.address.partition(".")[2], autostop, handle.skyform_id))
    assert again == handle and uids_of(kube, handle) == uids
    return len([m for m, _, _ in kube.a.requests[asked:] if m == "PATCH"])


def uids_of(kube: Kube, handle: Handle) -> list[str]:
    found = kube.pods("ctx-a", pods.selector(handle.skyform_id))
    assert len(found) == 2
    return [p["metadata"]["uid"] for p in found]


def test_interactive_use_holds_off_autostop_until_the_cluster_is_idle_again(kube: Kube) -> None:
    provider = kube.provider("ctx-a")
    used = launch(provider, kube, "used", "{idle_minutes: 10, down: true}")
    idle = launch(provider, kube, "idle", "{idle_minutes: 10, down: true}")
    launched = observe(provider)["cluster.used"].launched_at
    assert observe(provider)["cluster.used"].last_active == launched  # nothing but the launch

    before = time.time()
    for_provider("kubernetes", kube.home).touch(used)  # what `skyform ssh cluster.used` does
    asked = len(kube.a.requests)
    seen = observe(provider)
    new_calls = [(m, p) for m, p, _ in kube.a.requests[asked:]]
    assert new_calls == [("GET", "/api/v1/namespaces/default/pods")]  # one list, no more
    touched = seen["cluster.used"].last_active
    assert int(before) <= touched <= time.time() and touched >= launched + UP_FOR_S - 1
    assert seen["cluster.idle"].last_active == seen["cluster.idle"].launched_at
    assert (seen["cluster.used"].autostop_minutes, seen["cluster.used"].autostop_down) == (10, True)

    # Past launch + 10 minutes, but 5 minutes after the session: only the idle one goes.
    stopped = enforce({"kubernetes": provider}, touched + 5 * 60)
    assert [(s.address, s.down) for s in stopped] == [("cluster.idle", True)]
    assert pods_of(kube, idle) == [] and len(pods_of(kube, used)) == 2

    # 11 minutes after the session: idle for longer than its autostop, so it goes too.
    stopped = enforce({"kubernetes": provider}, touched + 11 * 60)
    assert stopped == [Stopped("cluster.used", True, 11.0)]
    assert pods_of(kube, used) == [] and provider.observe() == []


def test_a_run_on_the_cluster_is_activity(kube: Kube) -> None:
    provider = kube.provider("ctx-a")
    handle = launch(provider, kube, "runner", "{idle_minutes: 10, down: true}")
    launched = observe(provider)["cluster.runner"].launched_at
    assert provider.run(handle, "true") == 0
    active = observe(provider)["cluster.runner"].last_active
    assert active >= launched + UP_FOR_S - 1
    assert enforce({"kubernetes": provider}, active + 5 * 60) == []
    assert len(pods_of(kube, handle)) == 2


def test_autostop_without_down_is_not_enforced_since_pods_cannot_stop(kube: Kube) -> None:
    """Stopping raises on Kubernetes; autostop must neither fail on it nor delete the cluster
    the user asked only to stop."""
    provider = kube.provider("ctx-a")
    handle = launch(provider, kube, "keep", "10")
    seen = observe(provider)["cluster.keep"]
    assert seen.autostop_minutes is None
    assert enforce({"kubernetes": provider}, seen.last_active + 60 * 60) == []
    assert len(pods_of(kube, handle)) == 2


def test_a_changed_autostop_is_applied_to_the_running_pods(kube: Kube) -> None:
    """`resources.autostop` changed on a running cluster is an in-place update: the relaunch
    with the same Skyform id adopts the pods and patches their launch record (one patch a pod,
    none when nothing changed, the rest of the record kept); observe() and
    `applier.autostop.enforce` then go by the new autostop."""
    provider = kube.provider("ctx-a")
    handle = launch(provider, kube, "changed", "10")
    assert observe(provider)["cluster.changed"].autostop_minutes is None  # no `down`: not acted on
    launched = observe(provider)["cluster.changed"].launched_at

    assert relaunch(provider, kube, handle, "10") == 0  # unchanged: not a call more

    patched = relaunch(provider, kube, handle, "{idle_minutes: 5, down: true}")
    seen = observe(provider)["cluster.changed"]
    assert (seen.autostop_minutes, seen.autostop_down) == (5, True)
    assert patched == 2
    assert [(r["autostop_minutes"], r["autostop_down"]) for r in records(kube, handle)] == [
        (5, True)
    ] * 2
    assert seen.launched_at == launched == seen.last_active  # the record's launch time is kept

    assert enforce({"kubernetes": provider}, launched + 4 * 60) == []
    stopped = enforce({"kubernetes": provider}, launched + 6 * 60)
    assert stopped == [Stopped("cluster.changed", True, 6.0)]
    assert pods_of(kube, handle) == [] and provider.observe() == []


def test_relaunching_without_autostop_removes_it(kube: Kube) -> None:
    """A relaunch whose task has no autostop clears the pods' record: nothing is enforced."""
    provider = kube.provider("ctx-a")
    handle = launch(provider, kube, "kept", "{idle_minutes: 5, down: true}")
    seen = observe(provider)["cluster.kept"]
    assert (seen.autostop_minutes, seen.autostop_down) == (5, True)

    patched = relaunch(provider, kube, handle, None)
    seen = observe(provider)["cluster.kept"]
    assert (seen.autostop_minutes, seen.autostop_down) == (None, False)
    assert patched == 2
    assert [(r["autostop_minutes"], r["autostop_down"]) for r in records(kube, handle)] == [
        (None, False)
    ] * 2
    assert enforce({"kubernetes": provider}, seen.last_active + 60 * 60) == []
    assert len(pods_of(kube, handle)) == 2
