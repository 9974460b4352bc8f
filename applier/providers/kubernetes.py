"""The `kubernetes` provider: clusters, jobs and service replicas as pods (one per node) in the
contexts of the search space, on the official `kubernetes` client.

- Where: `placement.region` is the context (kubeconfig, KUBECONFIG honoured, or in-cluster);
  the namespace is the skyform.yaml entry's, else the context's, else `default`.
- Tags: every pod carries `skyform.io/id`, `skyform.io/address` (label-safe) and the resource's
  name; the annotation `skyform.io/handle` holds what observe() needs to rebuild the Handle, so
  `observe` is one list call per (context, namespace) and a crashed launch is adopted.
- GPUs: `nvidia.com/gpu` requests and limits, and a required node affinity on the GPU label the
  cluster's nodes carry (see kubernetes_capacity.GPU_LABEL_KEYS).
- Gang scheduling: all pods are created, then all must be scheduled within `schedule_timeout_s`
  (10 s by default, as SkyPilot); an Unschedulable pod (or the timeout, with the scheduler's
  FailedScheduling events as the reason) deletes everything created and raises CapacityError.
  With a cluster autoscaler set `wait_for_autoscaler` so Unschedulable waits out the timeout.
- Kueue (optional): with `queue: <LocalQueue>` the pods carry Kueue's queue-name and
  pod-group labels (and the group's size), so Kueue admits the gang at once; gated pods are not
  Unschedulable, so give `schedule_timeout_s` room for queueing.
- Services: a replica listens on `ports[0]` (else the service's `ports`, else 8080; also given
  as PORT); its pod gets a readinessProbe from the readiness_probe, and its endpoint is
  `<pod IP>:<port>`, reachable from inside the cluster (Skyform's load balancer fronts it).
  Per namespace, a ClusterIP Service named after the service's address also selects its
  replica pods (targetPort `serve`): every replica launch claims it (and patches its port to
  that version's), and it goes only when no replica is left there, even with launches and
  terminates racing (kubernetes_replica_service).
- skyform.yaml's `queue`, `image` and `schedule_timeout` are per context (ContextSettings)
  and override the constructor's.
- Clusters cannot be stopped on Kubernetes (as in SkyPilot): stop/start raise ProviderError.
  Autostop with `down: true` terminates an idle cluster; activity is the launch and the pods'
  `skyform.dev/last-active` annotation (runs, `skyform ssh/exec/port-forward`). The autostop
  is in the pods' launch record; a relaunch that adopts them with another one patches it.
- Workdir and local file mounts: tarred and copied into every pod through exec once it runs
  (kubernetes_files); the bootstrap holds setup until they are in. Bucket mounts and git
  workdirs are not copied yet (fetch them in setup).
- Setup re-run: the launch record holds the hash of the setup's inputs (local_files.setup_hash:
  setup, envs, workdir, file_mounts). A cluster relaunched with another one (an in-place update)
  keeps its pods: the files are copied again and the new setup runs in each pod through exec
  (output in `setup.log`), then the pods record the new hash; a failed setup is a ProviderError
  and the old hash stays, as on the local provider.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from applier.provider import (
    FreeCapacity,
    Handle,
    JobState,
    LaunchRequest,
    LogFile,
    ObservedResource,
    Placement,
    ResourceKind,
    Selector,
    node_shape,
)
from applier.providers import kubernetes_capacity as cap
from applier.providers import kubernetes_exec as kexec
from applier.providers import kubernetes_files as kfiles
from applier.providers import kubernetes_gang as gang
from applier.providers import kubernetes_pods as pods
from applier.providers import kubernetes_replica_service as replica_service
from applier.providers import kubernetes_status as kstatus
from applier.providers.kubernetes_api import (
    Api,
    ContextSettings,
    Kubeconfig,
    contexts_from_settings,
    status_code,
)
from applier.providers.kubernetes_capacity import GpuAvailability
from applier.providers.local_files import base_env, setup_hash, task_id
from schema.errors import CapacityError, ProviderError, SkyformError

log = logging.getLogger(__name__)


class KubernetesProvider:
    """See the module docstring. Nothing global is read after construction but KUBECONFIG."""

    name = "kubernetes"

    def __init__(
        self,
        home: Path,
        contexts: Sequence[ContextSettings] = (ContextSettings(None),),
        *,
        schedule_timeout_s: float = 10.0,
        poll_s: float = 0.2,
        image: str = pods.DEFAULT_IMAGE,
        queue: str | None = None,
        wait_for_autoscaler: bool = False,
    ) -> None:
        self._home = home
        self._kc = Kubeconfig.load()
        self._settings = {self._kc.resolve(c.context): c for c in contexts}
        self._default = next(iter(self._settings))
        self._timeout = schedule_timeout_s
        self._poll = poll_s
        self._image = image
        self._queue = queue
        self._wait_autoscaler = wait_for_autoscaler
        self._apis: dict[str, Api] = {}
        self._lock = threading.Lock()

    # ---- where ----------------------------------------------------------------------------

    @property
    def contexts(self) -> list[str]:
        return list(self._settings)

    def _context(self, placement: Placement) -> str:
        ctx = placement.region or self._default
        if ctx not in self._settings:
            raise ProviderError(
                f"kubernetes: context {ctx!r} is not in this repo's search space "
                f"({', '.join(self._settings)}); add `infra: k8s/{ctx}` to skyform.yaml"
            )
        return ctx

    def namespace(self, context: str) -> str:
        return self._settings[context].namespace or self._kc.namespaces.get(context) or "default"

    def _queue_of(self, context: str) -> str | None:
        return self._settings[context].queue or self._queue

    def _image_of(self, context: str) -> str:
        return self._settings[context].image or self._image

    def _timeout_of(self, context: str) -> float:
        timeout = self._settings[context].schedule_timeout_s
        return self._timeout if timeout is None else timeout

    def api(self, context: str) -> Api:
        with self._lock:
            if context not in self._apis:
                self._apis[context] = Api(context, self._kc.api_client(context))
            return self._apis[context]

    def _where(self, handle: Handle) -> tuple[Api, str, str]:
        """(api, namespace, resource name) of a handle."""
        namespace, _, prefix = handle.resource_id.partition("/")
        return self.api(self._context(handle.placement)), namespace, prefix

    # ---- capacity -------------------------------------------------------------------------

    def nodes_free(self, context: str) -> list[cap.NodeFree]:
        api = self.api(context)
        nodes = api.call("list nodes", api.core.list_node).items
        running = api.call(
            "list pods", api.core.list_pod_for_all_namespaces,
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        ).items  # fmt: skip
        return cap.nodes_free(nodes, running)

    def capacity(self) -> list[FreeCapacity]:
        """One offering per (context, free node shape); an unreachable context offers nothing
        (logged), so planning goes on with the other places."""
        out = []
        for ctx, settings in self._settings.items():
            try:
                free = self.nodes_free(ctx)
            except SkyformError as exc:
                log.warning("kubernetes/%s: no capacity information: %s", ctx, exc)
                continue
            for node, count in cap.shapes(free):
                gpus = 1 if node.accelerator and node.gpus else 0
                default = (4.0, 16.0) if gpus else (2.0, 2.0)  # the planner's default pod
                price = cap.pod_price(settings.pricing, *default, node.accelerator, gpus)
                out.append(
                    FreeCapacity(
                        provider=self.name, cloud="kubernetes", region=ctx, cpus=node.cpus,
                        memory_gib=node.memory_gib, accelerator=node.accelerator,
                        accelerator_count=node.gpus, nodes=count, hourly_price=price,
                    )
                )  # fmt: skip
        return out

    def gpu_availability(self) -> list[GpuAvailability]:
        """Per context and GPU type: total and free GPUs (`show-gpus --infra kubernetes`)."""
        return [
            row for ctx in self._settings for row in cap.gpu_availability(ctx, self.nodes_free(ctx))
        ]

    def _gpu_terms(self, api: Api, req: LaunchRequest) -> list[tuple[str, list[str]]]:
        """(label key, values) of the nodes carrying the requested GPU type."""
        want = (req.placement.accelerator or "").lower()
        found: dict[str, set[str]] = {}
        for node in cap.nodes_free(api.call("list nodes", api.core.list_node).items, []):
            if node.gpu_label and (node.accelerator or "").lower() == want:
                found.setdefault(node.gpu_label[0], set()).add(node.gpu_label[1])
        if not found:
            raise CapacityError(
                f"{req.address}: no node in kubernetes/{api.context} has a "
                f"{req.placement.accelerator} GPU (by the labels {', '.join(cap.GPU_LABEL_KEYS)})",
                req.placement,
            )
        return [(key, sorted(values)) for key, values in sorted(found.items())]

    # ---- launch ---------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> Handle:
        ctx = self._context(req.placement)
        api, ns = self.api(ctx), self.namespace(ctx)
        self._validate(req)
        files = kfiles.targets(req) if kfiles.wanted(req) else []
        data = kfiles.archive(req, files) if files else b""
        prefix = pods.resource_name(req.address, req.skyform_id)
        existing = gang.list_pods(api, ns, pods.selector(req.skyform_id))
        meta = next((m for m in map(kstatus.launch_record, existing) if m), None)
        new_hash = setup_hash(req)
        if meta is None:
            meta = pods.handle_meta(req, task_id(req, datetime.now()), time.time(), new_hash)
        else:  # adopting: the request's autostop replaces the one the pods were launched with
            meta |= pods.autostop_record(req)
            self._update_autostop(api, ns, req, existing)
        stale = self._stale_setup(req, existing, new_hash)
        meta |= {"setup_hash": new_hash}  # what a pod made now runs in its bootstrap
        user_env = base_env(req)
        gpu_terms = self._gpu_terms(api, req) if req.placement.gpus_per_node else []
        try:
            if req.num_nodes > 1:
                self._create(api, ns, "service", prefix, api.core.create_namespaced_service,
                             pods.headless_service(req, prefix))  # fmt: skip
            for rank in range(req.num_nodes):
                manifest = pods.pod_manifest(
                    req, rank, prefix=prefix, shape=node_shape(req), gpu_terms=gpu_terms,
                    meta=meta, user_env=user_env, image=pods.image_of(req, self._image_of(ctx)),
                    queue=self._queue_of(ctx),
                )  # fmt: skip
                self._create(api, ns, "pod", manifest["metadata"]["name"],
                             api.core.create_namespaced_pod, manifest)  # fmt: skip
            listed = gang.wait_scheduled(
                api, ns, req, prefix, self._timeout_of(ctx), self._poll, self._wait_autoscaler
            )
            fresh = [r for r in range(req.num_nodes) if r not in stale]  # the rest: re-run below
            if files and fresh:
                listed = self._copy_files(api, ns, req, prefix, files, data, fresh)
        except (CapacityError, ProviderError):
            self._delete(
                api, ns, req.skyform_id, prefix, req.num_nodes
            )  # all or nothing: no half a gang
            if req.kind == ResourceKind.SERVICE_REPLICA:
                self._release_replica_service(api, ns, req.address, req.skyform_id)
            raise
        handle = kstatus.handle_from_pod(listed[0])
        if handle is None:
            raise ProviderError(f"{req.address}: pod {prefix}-0 lost its Skyform annotation")
        if stale:  # a running cluster keeps its pods whatever happens here
            self._rerun_setup(api, ns, req, prefix, stale, files, data, meta)
        if req.kind == ResourceKind.SERVICE_REPLICA:
            self._ensure_replica_service(api, ns, req)
        return handle

    def _ensure_replica_service(self, api: Api, ns: str, req: LaunchRequest) -> None:
        """The service's ClusterIP Service, claimed once a replica is placed (a failed launch
        claims nothing): made, or patched to this version's ports (kubernetes_replica_service).
        Best effort: Skyform's load balancer fronts the replica either way, so a refusal (say,
        no right to patch services) is logged, not a failed replica."""
        try:
            replica_service.claim(api, ns, req)
        except SkyformError as exc:
            name = pods.replica_service_name(req.address)
            log.warning("%s: no ClusterIP Service %s in %s: %s", req.address, name, ns, exc)

    def _update_autostop(self, api: Api, ns: str, req: LaunchRequest, existing: list[Any]) -> None:
        """A changed `resources.autostop` (an in-place update): the launch record of each pod
        that says otherwise is patched, the rest of it kept; the pods as already listed tell,
        so nothing is called when they all agree."""
        wanted = pods.autostop_record(req)
        for pod in existing:
            record = kstatus.launch_record(pod)
            if record is None or all(record.get(k) == v for k, v in wanted.items()):
                continue
            name = pod.metadata.name
            patch = pods.record_patch(record | wanted)
            api.call_ok_missing(  # a pod deleted meanwhile needs no record
                f"annotate pod {name}", api.core.patch_namespaced_pod, name, ns, patch
            )

    def _validate(self, req: LaunchRequest) -> None:
        if req.num_nodes < 1:
            raise ProviderError(f"{req.address}: num_nodes must be at least 1")

    # ---- setup re-run ---------------------------------------------------------------------

    @staticmethod
    def _stale_setup(req: LaunchRequest, existing: list[Any], new_hash: str) -> dict[int, Any]:
        """The adopted pods of a cluster (by rank) whose recorded setup hash is not `new_hash`:
        its setup, envs, workdir or file_mounts changed (an in-place update), so setup runs
        again in them. A pod recorded without a hash (an older Skyform) counts as changed."""
        if req.kind != ResourceKind.CLUSTER:
            return {}
        out = {}
        for pod in existing:
            record = kstatus.launch_record(pod)
            rank = (pod.metadata.labels or {}).get(pods.RANK, "")
            if record is not None and rank.isdigit() and record.get("setup_hash") != new_hash:
                out[int(rank)] = pod
        return out

    def _rerun_setup(
        self, api: Api, ns: str, req: LaunchRequest, prefix: str, stale: Mapping[int, Any],
        files: list[kfiles.Target], data: bytes, meta: Mapping[str, Any],
    ) -> None:  # fmt: skip
        """The new setup, through exec, in every pod of `stale` once all pods run (as `sky
        launch` on an existing cluster): the workdir and file_mounts copied again, then setup
        with the request's envs and SkyPilot's variables; its output goes to `setup.log`. Then
        the pods record the new hash (and the activity). A failed setup is a ProviderError
        naming its exit code and log, as on the local provider; the pods keep running with the
        old hash, so the next apply tries again."""
        listed = _by_rank(self._wait_running(api, ns, req, "setup could not be re-run"))
        ips = "\n".join(str(listed[r].status.pod_ip or "") for r in range(req.num_nodes))
        base = kexec.log_dir(self._home, api.context, f"{ns}/{prefix}")
        user_env = base_env(req)
        runs = {r: functools.partial(kexec.exec_in_pod, api, ns, pods.pod_name(prefix, r))
                for r in sorted(stale)}  # fmt: skip
        if files:
            for run in runs.values():
                kfiles.upload(req, files, data, functools.partial(run, env=None), force=True)
        failed: tuple[int, int] | None = None
        for rank, run in runs.items() if req.task.setup else ():
            env = pods.setup_env(req, rank, str(meta["task_id"]), user_env, ips)
            unset = "".join(f"unset {k}\n" for k in _dropped_env(listed[rank], env))
            code, output = run(unset + str(req.task.setup), env)
            kexec.append_stage_log(base, rank, "setup", req.task.setup or "", output)
            if code != 0 and failed is None:
                failed = (rank, code)
        if failed is not None:
            raise ProviderError(
                f"{req.address}: setup failed with exit code {failed[1]} on node {failed[0]}; "
                f"see {base / f'node-{failed[0]}' / 'setup.log'}"
            )
        now = time.time()
        for rank, pod in stale.items():
            record = (kstatus.launch_record(pod) or {}) | pods.autostop_record(req)
            patch = pods.record_patch(record | {"setup_hash": meta["setup_hash"]})
            patch["metadata"]["annotations"] |= pods.activity_patch(now)["metadata"]["annotations"]
            name = pods.pod_name(prefix, rank)
            api.call_ok_missing(
                f"annotate pod {name}", api.core.patch_namespaced_pod, name, ns, patch
            )

    # ---- files ----------------------------------------------------------------------------

    def _wait_running(self, api: Api, ns: str, req: LaunchRequest, what: str) -> list[Any]:
        """The pods as listed once every one runs (bounded: image pulls); a pod that ended, or
        the timeout, is a ProviderError saying `what` could not be done."""
        deadline = time.monotonic() + kfiles.RUNNING_TIMEOUT_S
        while True:
            listed = gang.list_pods(api, ns, pods.selector(req.skyform_id))
            views = kstatus.views(listed, req.num_nodes)
            if all(v.running for v in views):
                return listed
            if any(v.lost or not v.present or v.exit_code is not None for v in views):
                state = kstatus.job_state(req.kind, views, req.placement.use_spot).value
                raise ProviderError(f"{req.address}: a pod has ended ({state}); {what}")
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{req.address}: pods not running within {kfiles.RUNNING_TIMEOUT_S:g}s "
                    f"(image pull?); {what}"
                )
            time.sleep(self._poll)

    def _copy_files(
        self, api: Api, ns: str, req: LaunchRequest, prefix: str,
        files: list[kfiles.Target], data: bytes, ranks: Sequence[int],
    ) -> list[Any]:  # fmt: skip
        """Once every pod runs (bounded), the workdir and file mounts into each of `ranks`;
        setup waits for them. The pods as listed last."""
        listed = self._wait_running(api, ns, req, "the workdir and file_mounts could not be copied")
        for rank in ranks:
            run = functools.partial(kexec.exec_in_pod, api, ns, pods.pod_name(prefix, rank))
            kfiles.upload(req, files, data, functools.partial(run, env=None))
        return listed

    def _create(self, api: Api, ns: str, what: str, name: str, fn: Any, body: Any) -> None:
        try:
            api.call(f"create {what} {name}", fn, ns, body)
        except ProviderError as exc:
            if status_code(exc) != 409:  # already there: an earlier launch made it; adopt
                raise

    # ---- observe --------------------------------------------------------------------------

    def observe(self, selector: Selector | None = None) -> list[ObservedResource]:
        label = f"{pods.MANAGED}=skyform"
        if selector is not None and selector.skyform_id:
            label += f",{pods.selector(selector.skyform_id)}"
        out = []
        for ctx in self._settings:
            api, ns = self.api(ctx), self.namespace(ctx)
            groups: dict[str, list[Any]] = {}
            for pod in gang.list_pods(api, ns, label):
                groups.setdefault((pod.metadata.labels or {}).get(pods.ID, ""), []).append(pod)
            for group in groups.values():
                handle = next((h for h in (kstatus.handle_from_pod(p) for p in group) if h), None)
                if handle is not None and (selector is None or selector.matches(handle)):
                    out.append(kstatus.observed(handle, group))
        return out

    def job_status(self, handle: Handle) -> JobState:
        api, ns, _ = self._where(handle)
        listed = gang.list_pods(api, ns, pods.selector(handle.skyform_id))
        if not listed:
            return JobState.NODE_LOST
        return kstatus.observed(handle, listed).job

    # ---- commands and logs ----------------------------------------------------------------

    def run(
        self,
        handle: Handle,
        command: str,
        node: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        api, ns, prefix = self._where(handle)
        listed = gang.list_pods(api, ns, pods.selector(handle.skyform_id))
        if not all(v.running for v in kstatus.views(listed, handle.num_nodes)):
            state = kstatus.observed(handle, listed).job.value if listed else "gone"
            raise ProviderError(f"{handle.address} has no running pods ({state}); cannot run")
        base = kexec.log_dir(self._home, api.context, handle.resource_id)
        first_failure = 0
        for rank in range(handle.num_nodes) if node is None else [node]:
            code, output = kexec.exec_in_pod(api, ns, pods.pod_name(prefix, rank), command, env)
            kexec.append_exec_log(base, rank, command, output)
            first_failure = first_failure or code
        kexec.mark_active(api, ns, [p.metadata.name for p in listed])
        return first_failure

    def log_paths(self, handle: Handle) -> list[LogFile]:
        api, ns, prefix = self._where(handle)
        base = kexec.log_dir(self._home, api.context, handle.resource_id)
        kexec.fetch_logs(api, ns, prefix, handle.num_nodes, base)
        return kexec.local_logs(base, handle.num_nodes)

    # ---- lifecycle ------------------------------------------------------------------------

    def stop(self, handle: Handle) -> None:
        raise ProviderError(
            f"{handle.address}: Kubernetes pods cannot be stopped (as in SkyPilot); "
            "remove the cluster instead, or set autostop with down: true"
        )

    def start(self, handle: Handle) -> Handle:
        raise ProviderError(f"{handle.address}: Kubernetes clusters are never stopped")

    def terminate(self, handle: Handle) -> None:
        api, ns, prefix = self._where(handle)
        self._delete(api, ns, handle.skyform_id, prefix, handle.num_nodes)
        if handle.kind == ResourceKind.SERVICE_REPLICA:
            replica_service.release(api, ns, handle.address, handle.skyform_id)

    def _release_replica_service(self, api: Api, ns: str, address: str, skyform_id: str) -> None:
        """After a replica's failed launch: its Service goes if no other replica holds it (a
        terminate that ran meanwhile saw the failed replica's pods and kept it). Best effort,
        so the launch's own error is what is raised."""
        try:
            replica_service.release(api, ns, address, skyform_id)
        except SkyformError as exc:
            log.warning("%s: ClusterIP Service in %s not cleaned up: %s", address, ns, exc)

    def _delete(self, api: Api, ns: str, skyform_id: str, prefix: str, num_nodes: int) -> None:
        """Pods by label in one call, then the Service of a multi-node resource; what is
        already gone is fine."""
        api.call(
            "delete pods",
            api.core.delete_collection_namespaced_pod,
            ns,
            label_selector=pods.selector(skyform_id),
        )
        if num_nodes > 1:
            api.call_ok_missing(
                f"delete service {prefix}", api.core.delete_namespaced_service, prefix, ns
            )


def _by_rank(listed: Sequence[Any]) -> dict[int, Any]:
    out = {}
    for pod in listed:
        rank = (pod.metadata.labels or {}).get(pods.RANK, "")
        if rank.isdigit():
            out[int(rank)] = pod
    return out


def _dropped_env(pod: Any, env: Mapping[str, str]) -> list[str]:
    """The variables the pod was made with that `env` (a relaunch's) no longer sets, and so
    must not reach the re-run setup (Skyform's own SKYFORM_* ones aside)."""
    containers = (pod.spec.containers if pod.spec else None) or []
    names = {e.name for c in containers for e in (c.env or [])}
    return sorted(n for n in names - set(env) if not n.startswith("SKYFORM_"))


# ---- the registry's entry points ------------------------------------------------------------


def from_settings(home: Path, settings: Mapping[str, Any]) -> KubernetesProvider:
    return KubernetesProvider(
        home,
        contexts_from_settings(settings),
        schedule_timeout_s=float(settings.get("schedule_timeout_s", 10.0)),
        image=str(settings.get("image") or pods.DEFAULT_IMAGE),
        queue=settings.get("queue"),
        wait_for_autoscaler=bool(settings.get("wait_for_autoscaler", False)),
    )


def check(settings: Mapping[str, Any]) -> str | None:
    """None when every configured context is in the kubeconfig (no network call), else why."""
    try:
        kc = Kubeconfig.load()
        for entry in contexts_from_settings(settings):
            kc.resolve(entry.context)
    except ProviderError as exc:
        return str(exc)
    return None


def gpu_availability(settings: Mapping[str, Any], home: Path) -> list[dict[str, Any]]:
    """`show-gpus --infra kubernetes[/ctx]` rows as plain data (for the CLI layer)."""
    return [row.as_dict() for row in from_settings(home, settings).gpu_availability()]
