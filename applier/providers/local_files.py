"""The local provider's files: where a resource's directories are, its metadata (the provider's
tag store), copying workdir and file mounts into a node, and the environment a node runs with.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from applier.provider import LaunchRequest, Placement, ResourceKind, ResourceStatus, node_shape
from schema.errors import ProviderError
from schema.task import GitWorkdir, Storage

NODE_IP = "127.0.0.1"  # every local node is this machine
WORKDIR = "sky_workdir"  # SkyPilot syncs the workdir to ~/sky_workdir


def resource_dir_name(address: str, skyform_id: str) -> str:
    return f"{address}-{skyform_id[:8]}"


def node_dir(resource_dir: Path, rank: int) -> Path:
    return resource_dir / f"node-{rank}"


def node_home(node: Path) -> Path:
    """The node's `~`: where the workdir and `~/...` mount destinations go."""
    return node / "home"


def read_meta(resource_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((resource_dir / "resource.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def setup_hash(req: LaunchRequest) -> str:
    """What makes a setup worth running again: its script, envs and synced inputs.

    Secret values are left out so that the hash, stored on disk, reveals nothing about them.
    """
    task = req.task
    mounts = {
        k: v if isinstance(v, str) else v.model_dump() for k, v in (task.file_mounts or {}).items()
    }
    envs = {k: v for k, v in {**task.envs, **req.envs}.items() if k not in task.secrets}
    body = {
        "setup": task.setup,
        "envs": envs,
        "workdir": task.workdir if isinstance(task.workdir, str | None) else task.workdir.url,
        "file_mounts": mounts,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_sources(req: LaunchRequest) -> None:
    """Refuse, before creating anything, what this machine cannot provide."""
    task = req.task
    if isinstance(task.workdir, GitWorkdir):
        raise ProviderError(
            f"{req.address}: a git workdir ({task.workdir.url}) is not supported on local; "
            "use a local directory, or place this resource on a cloud"
        )
    if isinstance(task.workdir, str):
        path = _source_path(task.workdir, req.base_dir)
        if not path.is_dir():
            raise ProviderError(
                f"{req.address}: workdir {task.workdir!r} is not a directory ({path})"
            )
    for dest, src in (task.file_mounts or {}).items():
        if isinstance(src, Storage) or "://" in src:
            where = src if isinstance(src, str) else (src.source or src.name)
            raise ProviderError(
                f"{req.address}: file_mounts {dest!r}: bucket {where!r} is not supported on "
                "local; mount local paths only, or place this resource on a cloud"
            )
        _mount_dest(Path("/"), dest, req.address)
        if not _source_path(src, req.base_dir).exists():
            raise ProviderError(
                f"{req.address}: file_mounts {dest!r}: source {src!r} does not exist"
            )


def _source_path(src: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(src))
    return path if path.is_absolute() else base_dir / path


def _mount_dest(home: Path, dest: str, address: str) -> Path:
    """`~/x` and relative `x` go under the node's home; absolute paths are refused, since every
    local node shares this machine's root."""
    if dest.startswith("~"):
        rel = dest[1:].lstrip("/")
    elif not dest.startswith("/"):
        rel = dest
    else:
        raise ProviderError(
            f"{address}: file_mounts destination {dest!r} is absolute; on local every node "
            "shares this machine's root, so write it as ~/... (it lands in the node's home)"
        )
    if ".." in Path(rel).parts:
        raise ProviderError(f"{address}: file_mounts destination {dest!r} leaves the node's home")
    return home / rel


def _ignore(skyform_home: Path) -> Callable[[str, list[str]], list[str]]:
    """Never copy Skyform's own home into a node (a workdir of `.` may contain it)."""
    home = skyform_home.resolve()

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if (Path(directory) / n).resolve() == home]

    return ignore


def sync_node(req: LaunchRequest, node: Path, skyform_home: Path) -> Path:
    """Copy the workdir and local file mounts into the node; return the run's cwd."""
    try:
        return _sync(req, node, skyform_home)
    except (OSError, shutil.Error) as exc:
        raise ProviderError(f"{req.address}: copying files into {node} failed: {exc}") from exc


def _sync(req: LaunchRequest, node: Path, skyform_home: Path) -> Path:
    home = node_home(node)
    home.mkdir(parents=True, exist_ok=True)
    ignore = _ignore(skyform_home)
    cwd = home
    if isinstance(req.task.workdir, str):
        cwd = home / WORKDIR
        src = _source_path(req.task.workdir, req.base_dir)
        shutil.copytree(src, cwd, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    for dest, src_text in (req.task.file_mounts or {}).items():
        assert isinstance(src_text, str)  # buckets were refused by check_sources
        src = _source_path(src_text, req.base_dir)
        target = _mount_dest(home, dest, req.address)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
    return cwd


def base_env(req: LaunchRequest) -> dict[str, str]:
    """The task's envs (with overrides) and secrets; these never touch the disk."""
    envs: dict[str, str | None] = {**req.task.envs, **req.envs}
    missing = sorted(k for k, v in envs.items() if v is None)
    missing += sorted(k for k, v in req.task.secrets.items() if v is None and k not in req.envs)
    if missing:
        raise ProviderError(
            f"{req.address}: no value for {', '.join(missing)}; pass it with --env NAME=VALUE"
        )
    out = {k: v for k, v in envs.items() if v is not None}
    for name, secret in req.task.secrets.items():
        if secret is not None and name not in req.envs:
            out[name] = secret.get_secret_value()
    return out


def task_id(req: LaunchRequest, now: datetime) -> str:
    """SkyPilot's format: `sky-<timestamp>_<cluster>_<job id>`, or for a managed job
    `sky-managed-<timestamp>_<job name>_<job id>-<task id>`."""
    if req.task_id:
        return req.task_id
    stamp = now.strftime("%Y-%m-%d-%H-%M-%S-%f")
    name = req.address.partition(".")[2]
    if req.kind == ResourceKind.JOB:
        return f"sky-managed-{stamp}_{name}_1-0"
    return f"sky-{stamp}_{name}_1"


def cluster_info(cluster_name: str, placement: Placement) -> str:
    """SKYPILOT_CLUSTER_INFO: a JSON string with cluster_name, cloud, region, zone."""
    info = {
        "cluster_name": cluster_name,
        "cloud": "Local",
        "region": placement.region,
        "zone": placement.zone,
    }
    return json.dumps(info)


def skypilot_env(
    meta: Mapping[str, Any], rank: int, stage: str, port: int | None
) -> dict[str, str]:
    """SkyPilot's variables for one node, as it sets them for `setup` and for `run`."""
    num_nodes = int(meta["num_nodes"])
    ips = "\n".join([NODE_IP] * num_nodes)
    env = {
        "SKYPILOT_NUM_NODES": str(num_nodes),
        "SKYPILOT_TASK_ID": str(meta["task_id"]),
        "SKYPILOT_CLUSTER_INFO": cluster_info(meta["cluster_name"], Placement(**meta["placement"])),
        "SKYPILOT_USER": getpass.getuser(),
    }
    if stage == "setup":
        env |= {"SKYPILOT_SETUP_NODE_RANK": str(rank), "SKYPILOT_SETUP_NODE_IPS": ips}
    else:
        gpus = Placement(**meta["placement"]).gpus_per_node
        env |= {
            "SKYPILOT_NODE_RANK": str(rank),
            "SKYPILOT_NODE_IPS": ips,
            "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus),
        }
    if meta.get("replica_id") is not None:
        env["SKYPILOT_SERVE_REPLICA_ID"] = str(meta["replica_id"])
    if port is not None:
        # The replica's assigned port: a free one here (replicas share this host), the
        # task's declared port elsewhere (`applier.controllers.service_replicas.replica_port`).
        env |= {"PORT": str(port), "SKYFORM_REPLICA_PORT": str(port)}
    return env


def new_record(req: LaunchRequest, now: float) -> dict[str, Any]:
    """The resource's metadata as first written (status LAUNCHING): its tags and reservation."""
    cpus, memory = node_shape(req)
    name = req.address.partition(".")[2]
    if req.kind == ResourceKind.SERVICE_REPLICA and req.replica_id is not None:
        cluster_name = f"{name}-{req.replica_id}"
    elif req.kind == ResourceKind.CLUSTER:
        cluster_name = name
    else:
        cluster_name = f"{name}-{req.skyform_id[:8]}"
    meta: dict[str, Any] = {
        "version": 1,
        "address": req.address,
        "skyform_id": req.skyform_id,
        "kind": req.kind.value,
        "placement": asdict(req.placement),
        "num_nodes": req.num_nodes,
        "ports": list(req.ports),
        "task_id": task_id(req, datetime.fromtimestamp(now)),
        "replica_id": req.replica_id,
        "cluster_name": cluster_name,
        "cpus": cpus,
        "memory_gib": memory,
        "status": ResourceStatus.LAUNCHING.value,
        "launched_at": now,
        "last_active": now,
        "setup_hash": setup_hash(req),
        **autostop_fields(req),
    }
    return meta


def autostop_fields(req: LaunchRequest) -> dict[str, Any]:
    """The record's autostop: written at create, and again when an update changes it."""
    autostop = req.task.resources.autostop
    enabled = autostop is not None and autostop.enabled
    return {
        "autostop_minutes": autostop.idle_minutes if autostop and enabled else None,
        "autostop_down": bool(autostop and enabled and autostop.down),
    }
