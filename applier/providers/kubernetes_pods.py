"""What Skyform creates in a cluster, as plain manifests: one pod per node (labels, GPU
requests and affinity, SkyPilot's env, the bootstrap that runs setup then run), and the
headless Service that gives a multi-node resource's pods DNS names (SKYPILOT_NODE_IPS).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from applier.provider import LaunchRequest, ResourceKind
from applier.providers.kubernetes_capacity import GPU_RESOURCE, GPU_TAINT_KEYS

LABEL = "skyform.io"
MANAGED = f"{LABEL}/managed-by"
ID = f"{LABEL}/id"
ADDRESS = f"{LABEL}/address"
KIND = f"{LABEL}/kind"
RESOURCE = f"{LABEL}/resource"
RANK = f"{LABEL}/rank"
META = f"{LABEL}/handle"  # annotation: what observe() needs to rebuild the Handle
# Annotation: when the pod was last used (epoch seconds): `skyform ssh/exec/port-forward` and
# provider runs write it; observe() reports the latest of it and the launch as `last_active`.
ACTIVITY = "skyform.dev/last-active"
# Annotation on a service's ClusterIP Service: the replica launch that last claimed it
# (`<skyform id> <epoch seconds>`, new every time, so each claim changes its resourceVersion).
CLAIM = f"{LABEL}/claimed-by"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT = "kueue.x-k8s.io/pod-group-total-count"  # annotation
CONTAINER = "skyform"
DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_SERVICE_PORT = 8080
RUN_EXIT = "/tmp/skyform/run.exit"

# The container's command. Setup then run, with SkyPilot's variables; the termination message
# names the stage that ended the container (so a failed setup is told from a failed run); a
# cluster's pod stays up after a successful run and reports it through its readiness probe.
BOOTSTRAP = r"""set -u
state="${SKYFORM_STATE_DIR:-/tmp/skyform}"
mkdir -p "$state"
mark() { printf '%s' "$1" > /dev/termination-log 2>/dev/null || true; }
shell() { if command -v bash >/dev/null 2>&1; then bash -c "$1"; else sh -c "$1"; fi; }
ips="${SKYFORM_POD_IP:-127.0.0.1}"
if [ -n "${SKYFORM_NODE_HOSTS:-}" ]; then
  ips=""
  for h in $SKYFORM_NODE_HOSTS; do
    ip=""; tries=0
    while [ -z "$ip" ] && [ "$tries" -lt 300 ]; do
      set -- $(getent hosts "$h" 2>/dev/null); ip="${1:-}"
      [ -n "$ip" ] || { tries=$((tries + 1)); sleep 1; }
    done
    ips="$ips${ips:+ }${ip:-$h}"
  done
  ips=$(printf '%s' "$ips" | tr ' ' '\n')
fi
export SKYPILOT_NODE_IPS="$ips" SKYPILOT_SETUP_NODE_IPS="$ips"
if [ "${SKYFORM_FILES:-0}" = 1 ]; then
  waited=0
  while [ ! -e "$state/files.ready" ]; do
    if [ "$waited" -ge "${SKYFORM_FILES_WAIT:-900}" ]; then
      mark setup; echo "skyform: the workdir and file_mounts never arrived" >&2; exit 1
    fi
    sleep 1; waited=$((waited + 1))
  done
fi
mkdir -p "$HOME/sky_workdir" 2>/dev/null && cd "$HOME/sky_workdir" 2>/dev/null
if [ -n "${SKYFORM_SETUP:-}" ]; then
  mark setup
  shell "$SKYFORM_SETUP"; rc=$?
  if [ "$rc" -ne 0 ]; then echo "skyform: setup exited with $rc" >&2; exit "$rc"; fi
fi
mark run
rc=0
if [ -n "${SKYFORM_RUN:-}" ]; then shell "$SKYFORM_RUN"; rc=$?; fi
echo "$rc" > "$state/run.exit"
if [ "${SKYFORM_KEEP:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
  while :; do sleep 3600; done
fi
exit "$rc"
"""


def resource_name(address: str, skyform_id: str) -> str:
    """A DNS-1035 name for the resource's pods and Service: `job-train-bert-1a2b3c4d`."""
    base = re.sub(r"[^a-z0-9-]+", "-", address.lower()).strip("-")[:40].rstrip("-") or "r"
    if not base[0].isalpha():
        base = f"r-{base}"
    return f"{base}-{re.sub(r'[^a-z0-9]', '', skyform_id.lower())[:8]}"


def label_value(text: str) -> str:
    """A valid label value (63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63].strip("_.-") or "x"


def pod_name(prefix: str, rank: int) -> str:
    return f"{prefix}-{rank}"


def image_of(req: LaunchRequest, default: str) -> str:
    image = req.task.resources.image_id
    if isinstance(image, dict):
        image = image.get(req.placement.region or "") or next(iter(image.values()), None)
    if isinstance(image, str) and image.startswith("docker:"):
        return image[len("docker:") :]
    return image or default


def service_port(req: LaunchRequest) -> int | None:
    if req.kind != ResourceKind.SERVICE_REPLICA:
        return None
    if req.ports:
        return req.ports[0]
    svc = req.task.service
    return svc.ports if svc is not None and svc.ports else DEFAULT_SERVICE_PORT


def selector(skyform_id: str) -> str:
    return f"{ID}={label_value(skyform_id)}"


def labels(req: LaunchRequest, prefix: str, queue: str | None) -> dict[str, str]:
    out = dict(req.task.resources.labels or {})
    out |= {
        MANAGED: "skyform",
        ID: label_value(req.skyform_id),
        ADDRESS: label_value(req.address),
        KIND: req.kind.value,
        RESOURCE: prefix,
    }
    if queue:
        # Kueue's plain-pod integration admits a pod group all at once: a gang.
        out |= {KUEUE_QUEUE: queue, KUEUE_GROUP: prefix}
    return out


def autostop_record(req: LaunchRequest) -> dict[str, Any]:
    """The launch record's autostop fields for `req` (minutes None: no autostop)."""
    autostop = req.task.resources.autostop
    if autostop is not None and not autostop.enabled:
        autostop = None
    return {
        "autostop_minutes": autostop.idle_minutes if autostop else None,
        "autostop_down": bool(autostop and autostop.down),
    }


def handle_meta(
    req: LaunchRequest, task_id: str, launched_at: float, setup_hash: str
) -> dict[str, Any]:
    """The launch record: what observe() needs to rebuild the Handle, the autostop, and the
    hash of the setup's inputs the pods ran (a relaunch with another one re-runs setup)."""
    return {
        "address": req.address,
        "skyform_id": req.skyform_id,
        "kind": req.kind.value,
        "placement": asdict(req.placement),
        "num_nodes": req.num_nodes,
        "task_id": task_id,
        "ports": list(req.ports),
        "replica_id": req.replica_id,
        "launched_at": launched_at,
        "setup_hash": setup_hash,
        **autostop_record(req),
    }


def record_patch(record: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that rewrites a pod's launch record (`META`)."""
    return {"metadata": {"annotations": {META: json.dumps(record, sort_keys=True)}}}


def activity_patch(now: float) -> dict[str, Any]:
    """The merge patch that records use of a pod at `now`."""
    return {"metadata": {"annotations": {ACTIVITY: str(int(now))}}}


def setup_env(
    req: LaunchRequest, rank: int, task_id: str, user_env: Mapping[str, str], node_ips: str
) -> dict[str, str]:
    """What setup sees when it is re-run through exec in node `rank`'s pod: what the bootstrap
    gives it (the task's envs, SkyPilot's variables, the node IPs one per line)."""
    env = {**user_env, **_skypilot_env(req, rank, task_id)}
    return env | {"SKYPILOT_NODE_IPS": node_ips, "SKYPILOT_SETUP_NODE_IPS": node_ips}


def _skypilot_env(req: LaunchRequest, rank: int, task_id: str) -> dict[str, str]:
    info = {
        "cluster_name": req.address.partition(".")[2],
        "cloud": "Kubernetes",
        "region": req.placement.region,
        "zone": None,
    }
    env = {
        "SKYPILOT_NUM_NODES": str(req.num_nodes),
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_SETUP_NODE_RANK": str(rank),
        "SKYPILOT_NUM_GPUS_PER_NODE": str(req.placement.gpus_per_node),
        "SKYPILOT_TASK_ID": task_id,
        "SKYPILOT_CLUSTER_INFO": json.dumps(info),
    }
    if req.replica_id is not None:
        env["SKYPILOT_SERVE_REPLICA_ID"] = str(req.replica_id)
    port = service_port(req)
    if port is not None:
        env |= {"PORT": str(port), "SKYFORM_REPLICA_PORT": str(port)}
    return env


def _env_list(
    req: LaunchRequest, rank: int, prefix: str, task_id: str, user_env: Mapping[str, str]
) -> list[dict[str, Any]]:
    env = {**user_env, **_skypilot_env(req, rank, task_id)}
    env |= {"SKYFORM_SETUP": req.task.setup or "", "SKYFORM_RUN": req.task.run or ""}
    if req.num_nodes > 1:
        env["SKYFORM_NODE_HOSTS"] = " ".join(
            f"{pod_name(prefix, r)}.{prefix}" for r in range(req.num_nodes)
        )
    if req.kind == ResourceKind.CLUSTER:
        env["SKYFORM_KEEP"] = "1"
    if req.task.workdir or req.task.file_mounts:
        env["SKYFORM_FILES"] = "1"  # setup waits for them (kubernetes_files)
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    out.append({"name": "SKYFORM_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return out


def _resources(cpus: float, memory_gib: float, gpus: int) -> dict[str, Any]:
    amounts = {"cpu": f"{math.ceil(cpus * 1000)}m", "memory": f"{math.ceil(memory_gib * 1024)}Mi"}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _readiness(req: LaunchRequest) -> dict[str, Any] | None:
    port = service_port(req)
    if req.kind == ResourceKind.CLUSTER:
        check = f'test "$(cat {RUN_EXIT} 2>/dev/null)" = 0'
        return {"exec": {"command": ["/bin/sh", "-c", check]}, "periodSeconds": 5}
    if port is None or req.task.service is None:
        return None
    probe = req.task.service.readiness_probe
    http: dict[str, Any] = {"path": probe.path, "port": port}
    if probe.headers:
        http["httpHeaders"] = [{"name": k, "value": v} for k, v in probe.headers.items()]
    # initial_delay_seconds is SkyPilot's grace before a replica counts as failed, which
    # Skyform's controller enforces; as Kubernetes' initialDelaySeconds it would hold
    # readiness back for that long, so probing starts at once here.
    return {
        "httpGet": http,
        "periodSeconds": probe.endpoint_probe_interval_seconds or 10,
        "timeoutSeconds": probe.timeout_seconds,
        "failureThreshold": 3,
    }


def _affinity(gpu_terms: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any] | None:
    if not gpu_terms:
        return None
    terms = [
        {"matchExpressions": [{"key": key, "operator": "In", "values": sorted(values)}]}
        for key, values in gpu_terms
    ]
    required = {"nodeSelectorTerms": terms}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def pod_manifest(
    req: LaunchRequest,
    rank: int,
    *,
    prefix: str,
    shape: tuple[float, float],
    gpu_terms: Sequence[tuple[str, Sequence[str]]],
    meta: Mapping[str, Any],
    user_env: Mapping[str, str],
    image: str,
    queue: str | None = None,
) -> dict[str, Any]:
    """The pod of node `rank`; `gpu_terms` are (label key, values) naming the GPU type."""
    gpus = req.placement.gpus_per_node
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["/bin/sh", "-c", BOOTSTRAP],
        "env": _env_list(req, rank, prefix, str(meta["task_id"]), user_env),
        "resources": _resources(shape[0], shape[1], gpus),
        "terminationMessagePolicy": "File",
    }
    port = service_port(req)
    if port is not None:
        container["ports"] = [{"containerPort": port, "name": "serve"}]
    probe = _readiness(req)
    if probe is not None:
        container["readinessProbe"] = probe
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if req.num_nodes > 1:
        spec |= {"hostname": pod_name(prefix, rank), "subdomain": prefix}
    affinity = _affinity(gpu_terms)
    if affinity is not None:
        spec["affinity"] = affinity
    if gpus:
        spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            for key in sorted(GPU_TAINT_KEYS)
        ]
    pod_labels = labels(req, prefix, queue) | {RANK: str(rank)}
    annotations = {META: json.dumps(meta, sort_keys=True)}
    if queue:
        annotations[KUEUE_COUNT] = str(req.num_nodes)
    metadata = {"name": pod_name(prefix, rank), "labels": pod_labels, "annotations": annotations}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def headless_service(req: LaunchRequest, prefix: str) -> dict[str, Any]:
    """DNS names `<prefix>-<rank>.<prefix>` for every pod, ready or not (the bootstrap resolves
    its peers before anything is ready)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": prefix, "labels": labels(req, prefix, None)},
        "spec": {
            "clusterIP": "None",
            "selector": {RESOURCE: prefix},
            "publishNotReadyAddresses": True,
        },
    }


def replica_selector(address: str) -> dict[str, str]:
    """The labels every replica pod of one service carries (whatever its skyform id)."""
    return {
        MANAGED: "skyform",
        ADDRESS: label_value(address),
        KIND: ResourceKind.SERVICE_REPLICA.value,
    }


def replica_service_name(address: str) -> str:
    """A DNS-1035 name for a service's ClusterIP Service: `service.api` -> `service-api`."""
    base = re.sub(r"[^a-z0-9-]+", "-", address.lower()).strip("-")[:63].rstrip("-") or "s"
    return base if base[0].isalpha() else f"s-{base}"[:63].rstrip("-")


def service_ports(req: LaunchRequest) -> list[dict[str, Any]]:
    """The ClusterIP Service's ports for `req`'s version of the service: its `ports` (else
    8080), forwarded to each replica pod's `serve` port."""
    svc = req.task.service
    port = svc.ports if svc is not None and svc.ports else DEFAULT_SERVICE_PORT
    return [{"name": "serve", "port": port, "targetPort": "serve", "protocol": "TCP"}]


def cluster_ip_service(req: LaunchRequest, claim: str) -> dict[str, Any]:
    """A ClusterIP Service over every ready replica pod of the service in this namespace: one
    stable in-cluster name and port (`service_ports`) that forwards to each pod's `serve` port,
    so replicas on different ports are fronted alike. It belongs to the service's address (no
    replica's id); `claim` names the replica launch that made it (`CLAIM`)."""
    meta_labels = replica_selector(req.address) | {KIND: "service"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": replica_service_name(req.address),
            "labels": meta_labels,
            "annotations": {CLAIM: claim},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": replica_selector(req.address),
            "ports": service_ports(req),
        },
    }


def service_claim_patch(req: LaunchRequest, claim: str) -> dict[str, Any]:
    """The merge patch by which a replica launch claims the existing Service: a new `CLAIM`
    (so its resourceVersion changes, which a concurrent terminate's delete is conditioned on)
    and the ports of this version (a merge patch replaces the list whole; a strategic one
    would add the new port beside the old)."""
    return {
        "metadata": {"annotations": {CLAIM: claim}},
        "spec": {"ports": service_ports(req)},
    }
