"""A declared resource as canonical, printable data (its "spec"), its hash, and field paths.

The spec is what the state store keeps and what a plan shows as before/after: human spellings
(`A100:8`, `4+`, `aws/us-east-1`), no defaults noise, and secrets only as `(sensitive value)`.
The hash also covers secret values, so rotating a secret is a change without ever showing it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from planner.plan import SENSITIVE
from schema.repo import DesiredResource
from schema.resources import Resources
from schema.task import Task


def _resources_view(res: Resources) -> dict[str, Any]:
    data: dict[str, Any] = res.model_dump(
        mode="json",
        exclude_none=True,
        by_alias=True,
        exclude={"any_of", "ordered", "accelerators", "infra", "cpus", "memory", "ports"},
    )
    if res.infra is not None:
        data["infra"] = str(res.infra)
    if res.accelerators is not None:
        accs = [str(a) for a in res.accelerators.candidates]
        if res.accelerators.ordered:
            data["accelerators"] = accs
        elif len(accs) == 1:
            data["accelerators"] = accs[0]
        else:
            data["accelerators"] = "{" + ", ".join(accs) + "}"
    if res.cpus is not None:
        data["cpus"] = str(res.cpus)
    if res.memory is not None:
        data["memory"] = str(res.memory)
    if res.ports is not None:
        data["ports"] = list(res.ports)
    if res.any_of:
        data["any_of"] = [_resources_view(r) for r in res.any_of]
    if res.ordered:
        data["ordered"] = [_resources_view(r) for r in res.ordered]
    return data


_SENSITIVE_ENV = re.compile(
    r"TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH", re.I
)


def sensitive_env(name: str) -> bool:
    """Env names that by convention hold credentials are shown as (sensitive value)."""
    return bool(_SENSITIVE_ENV.search(name))


def task_view(task: Task) -> dict[str, Any]:
    data: dict[str, Any] = task.model_dump(
        mode="json",
        exclude_none=True,
        by_alias=True,
        exclude={"resources", "secrets", "skyform", "envs"},
    )
    resources = _resources_view(task.resources)
    if resources:
        data["resources"] = resources
    if task.envs:
        data["envs"] = {
            k: SENSITIVE if v is not None and sensitive_env(k) else v for k, v in task.envs.items()
        }
    if task.secrets:
        data["secrets"] = dict.fromkeys(task.secrets, SENSITIVE)
    data["num_nodes"] = task.num_nodes
    return data


def spec_of(resource: DesiredResource) -> dict[str, Any]:
    """The printable spec of a declared resource (single task, or a pipeline's stages)."""
    tasks = [t.task for t in resource.source.tasks]
    if resource.source.is_pipeline:
        header = resource.source.header
        spec: dict[str, Any] = {"stages": [task_view(t) for t in tasks]}
        if header is not None:
            spec["execution"] = header.execution
    else:
        spec = task_view(tasks[0])
    block = resource.skyform
    if block.protect:
        spec["skyform.protect"] = True
    if block.state != "running":
        spec["skyform.state"] = block.state
    return spec


def _secret_digest(resource: DesiredResource) -> list[list[str | None]]:
    out = []
    for t in resource.source.tasks:
        for name, value in sorted(t.task.secrets.items()):
            out.append([name, None if value is None else value.get_secret_value()])
        for name, env in sorted(t.task.envs.items()):
            if sensitive_env(name):
                out.append([f"env:{name}", env])
    return out


def spec_hash(resource: DesiredResource, spec: dict[str, Any] | None = None) -> str:
    """Hash of the spec plus secret values; pass `spec` when the caller already built it."""
    payload = json.dumps(
        {
            "spec": spec if spec is not None else spec_of(resource),
            "secrets": _secret_digest(resource),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted paths (`resources.cpus`), lists of mappings indexed
    (`stages[1].run`); lists of scalars and scalars are leaves."""
    if isinstance(spec, list) and spec and all(isinstance(v, dict) for v in spec):
        out_list: dict[str, Any] = {}
        for i, item in enumerate(spec):
            out_list.update(flatten(item, f"{prefix}[{i}]"))
        return out_list
    if not isinstance(spec, dict) or not spec:
        return {prefix: spec} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        nested_list = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        nested_map = isinstance(value, dict) and value and key not in ("labels", "envs", "secrets")
        if nested_list or nested_map:
            out.update(flatten(value, path))
        elif isinstance(value, dict) and key in ("envs", "secrets", "labels"):
            for k, v in value.items():
                out[f"{path}.{k}"] = v
        else:
            out[path] = value
    return out


# Which changed fields an existing resource takes in place; anything else forces replacement.
_IN_PLACE = {
    "cluster": (
        "resources.autostop",
        "resources.labels",
        "envs",
        "secrets",
        "setup",
        "run",
        "workdir",
        "file_mounts",
        "name",
        "skyform.protect",
        "skyform.state",
    ),
    "job": ("skyform.protect",),
    "service": ("service.replicas", "service.replica_policy", "service.load_balancing_policy",
                "skyform.protect"),
}  # fmt: skip


def forces_replacement(kind: str, path: str) -> bool:
    for prefix in _IN_PLACE.get(kind, ()):
        if path == prefix or path.startswith(prefix + "."):
            return False
    return True


def ignored(path: str, patterns: tuple[str, ...]) -> bool:
    """`ignore_changes` entries match a field path or anything under it (`envs` covers envs.X)."""
    for pattern in patterns:
        pat = pattern.strip()
        if pat in ("*", "all") or path == pat or path.startswith(pat + "."):
            return True
    return False
