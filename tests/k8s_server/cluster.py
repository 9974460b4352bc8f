"""What runs behind the fake API server: a tiny scheduler (binds a pod to a node with enough
free cpu/memory/GPUs that satisfies its nodeSelector, required node affinity and taints, or
marks it Unschedulable with a FailedScheduling event) and a simulated kubelet that cannot run
containers, so tests script what happens: finish a pod with an exit code, evict it, lose a
node, mark a readiness probe passed, set its log, answer an exec (scripted by `exec_handler`,
or run for real as a process on this machine by `exec_runner`, see `tests.k8s_server.pod_exec`).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.k8s_server.store import ApiError, Obj, ObjectStore, now_iso

GPU_KEY = "nvidia.com/gpu"
_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "": 1.0,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")

ExecHandler = Callable[[Obj, list[str]], tuple[int, str]]


@dataclass(frozen=True)
class PodProcess:
    """An exec's command running as a process (leading a process group of its own): its
    stdin/stdout/stderr are pipes, or with `tty` all three are a terminal whose controller
    end is `tty`."""

    proc: subprocess.Popen[bytes]
    tty: int | None = None


ExecRunner = Callable[[Obj, list[str], bool], PodProcess]  # (pod, command, tty)


def quantity(text: Any) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "2") as a float of base units."""
    m = _QUANTITY.match(str(text).strip())
    if m is None or m.group(2) not in _SUFFIX:
        raise ApiError(422, "Invalid", f"quantities must match the regular expression: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def pod_requests(pod: Obj) -> dict[str, float]:
    total: dict[str, float] = {}
    for c in pod.get("spec", {}).get("containers") or []:
        resources = c.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for key, value in asked.items():
            total[key] = total.get(key, 0.0) + quantity(value)
    return total


def _expression_matches(expr: Obj, labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise ApiError(422, "Invalid", f"unsupported node selector operator {op!r}")


def node_selected(pod: Obj, node: Obj) -> bool:
    """nodeSelector (all labels equal) and required node affinity (any term, all expressions)."""
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec", {})
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if not required:
        return True
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in required
    )


def tolerated(pod: Obj, node: Obj) -> bool:
    tolerations = pod.get("spec", {}).get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.get("key") == taint["key"]
            and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
            for t in tolerations
        ):
            return False
    return True


class FakeCluster:
    """The scheduler and kubelet. Every method takes the store's lock, so a test hook and a
    request never interleave half-way."""

    def __init__(self, store: ObjectStore, pod_ip: str | None = None) -> None:
        self.store = store
        self.pod_ip = pod_ip  # every pod gets this IP (e.g. 127.0.0.1); else 10.0.0.<n>
        self.auto_run = True  # bound pods start Running at once
        self.exec_handler: ExecHandler = lambda pod, command: (0, "")
        self.exec_runner: ExecRunner | None = None  # set: execs run for real, streamed
        self.logs: dict[tuple[str, str], str] = {}
        self._ips = itertools.count(10)
        store.create("namespaces", "", {"metadata": {"name": "default"}})

    # ---- setting up the cluster -----------------------------------------------------------

    def add_node(
        self,
        name: str,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        taints: list[Obj] | None = None,
        ready: bool = True,
    ) -> None:
        resources = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            resources[GPU_KEY] = str(gpus)
        node = {
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "spec": {"taints": taints} if taints else {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False", "reason": "Kubelet"}
                ],
            },
        }
        self.store.create("nodes", "", node)

    def add_namespace(self, name: str) -> None:
        self.store.create("namespaces", "", {"metadata": {"name": name}})

    # ---- the scheduler --------------------------------------------------------------------

    def free(self, node: Obj) -> dict[str, float]:
        """Allocatable minus the requests of the Pending/Running pods bound to the node."""
        left = {k: quantity(v) for k, v in node["status"]["allocatable"].items()}
        for pod in self.store.list(
            "pods", None, fields=f"spec.nodeName={node['metadata']['name']}"
        ):
            if pod.get("status", {}).get("phase") in ("Pending", "Running"):
                for key, value in pod_requests(pod).items():
                    left[key] = left.get(key, 0.0) - value
        return left

    def _fits(self, pod: Obj, node: Obj) -> bool:
        free = self.free(node)
        return all(free.get(k, 0.0) + 1e-9 >= v for k, v in pod_requests(pod).items())

    def schedule(self, namespace: str, name: str) -> None:
        """Bind the pod to the first fitting node by name, or record why none fits."""
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            if pod["spec"].get("nodeName"):
                return
            nodes = self.store.list("nodes", None)
            usable = [
                n
                for n in nodes
                if not n.get("spec", {}).get("unschedulable")
                and node_selected(pod, n)
                and tolerated(pod, n)
            ]
            fitting = [n for n in usable if self._fits(pod, n)]
            if fitting:
                self._bind(pod, fitting[0]["metadata"]["name"])
            else:
                why = "Insufficient resources" if usable else "didn't match Pod's node affinity"
                self._unschedulable(pod, f"0/{len(nodes)} nodes are available: {why}.")

    def _bind(self, pod: Obj, node: str) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        pod["spec"]["nodeName"] = node
        self.store.replace("pods", ns, name, pod, "spec")
        ip = self.pod_ip or f"10.0.0.{next(self._ips)}"
        cond = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}
        status = {"phase": "Pending", "conditions": [cond], "hostIP": "10.1.0.1", "podIP": ip}
        status["podIPs"] = [{"ip": ip}]
        self.store.update("pods", ns, name, {"status": status}, "status")
        self.event(pod, "Scheduled", f"Successfully assigned {ns}/{name} to {node}", "Normal")
        if self.auto_run:
            self.start(ns, name)

    def _unschedulable(self, pod: Obj, message: str) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now_iso(),
        }
        self.store.update("pods", ns, name, {"status": {"conditions": [cond]}}, "status")
        self.event(pod, "FailedScheduling", message, "Warning")

    def reschedule(self) -> None:
        """Try every unbound pod again (after something freed capacity)."""
        with self.store.lock:
            for pod in self.store.list("pods", None, fields="spec.nodeName="):
                self.schedule(pod["metadata"]["namespace"], pod["metadata"]["name"])

    def event(self, pod: Obj, reason: str, message: str, kind: str) -> None:
        meta = pod["metadata"]
        self.store.create(
            "events",
            meta["namespace"],
            {
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:10]}"},
                "involvedObject": {
                    "kind": "Pod",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta.get("uid"),
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "count": 1,
                "firstTimestamp": now_iso(),
                "lastTimestamp": now_iso(),
                "source": {"component": "default-scheduler"},
            },
        )

    # ---- the kubelet (test hooks) ---------------------------------------------------------

    def _container_status(self, pod: Obj, state: Obj, ready: bool) -> list[Obj]:
        return [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
            }
            for c in pod["spec"].get("containers") or []
        ]

    def start(self, namespace: str, name: str) -> None:
        """Running; ready at once unless a container has a readiness probe."""
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            probed = any(c.get("readinessProbe") for c in pod["spec"].get("containers") or [])
            state = {"running": {"startedAt": now_iso()}}
            status = {
                "phase": "Running",
                "startTime": now_iso(),
                "containerStatuses": self._container_status(pod, state, not probed),
            }
            self.store.update("pods", namespace, name, {"status": status}, "status")

    def set_ready(self, namespace: str, name: str, ready: bool = True) -> None:
        """A readiness probe passed (or failed): sets the container's `ready` and the pod's
        Ready condition."""
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            statuses = pod["status"].get("containerStatuses") or []
            for cs in statuses:
                cs["ready"] = ready
            conds = [c for c in pod["status"].get("conditions") or [] if c["type"] != "Ready"]
            conds.append({"type": "Ready", "status": str(ready), "lastTransitionTime": now_iso()})
            patch = {"containerStatuses": statuses, "conditions": conds}
            self.store.update("pods", namespace, name, {"status": patch}, "status")

    def finish(self, namespace: str, name: str, exit_code: int = 0, message: str = "run") -> None:
        """The container exits with `exit_code`; `message` is its termination message."""
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            term = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "message": message,
                "startedAt": now_iso(),
                "finishedAt": now_iso(),
            }
            status = {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": self._container_status(pod, {"terminated": term}, False),
            }
            self.store.update("pods", namespace, name, {"status": status}, "status")
            self.reschedule()

    def evict(self, namespace: str, name: str, reason: str = "Evicted") -> None:
        """The kubelet evicts the pod (node pressure, or preemption with reason
        "Preempting"): phase Failed and a DisruptionTarget condition, as Kubernetes 1.26+."""
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            conds = list(pod["status"].get("conditions") or [])
            conds.append(
                {"type": "DisruptionTarget", "status": "True", "reason": reason,
                 "lastTransitionTime": now_iso()}
            )  # fmt: skip
            term = {"exitCode": 137, "reason": "Error", "finishedAt": now_iso()}
            status = {
                "phase": "Failed",
                "reason": reason,
                "message": f"The pod was {reason.lower()}.",
                "conditions": conds,
                "containerStatuses": self._container_status(pod, {"terminated": term}, False),
            }
            self.store.update("pods", namespace, name, {"status": status}, "status")
            self.reschedule()

    def lose_node(self, node: str) -> None:
        """The node vanishes: it and its pods are deleted (what the pod GC does after it)."""
        with self.store.lock:
            for pod in self.store.list("pods", None, fields=f"spec.nodeName={node}"):
                self.store.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.store.delete("nodes", "", node)

    def pods(self, labels: str | None = None, namespace: str | None = None) -> list[Obj]:
        return self.store.list("pods", namespace, labels=labels)
