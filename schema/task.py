"""A SkyPilot task (one YAML document) and its parts: service, file mounts, Skyform's own block."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator

from schema.resources import Frozen, Resources

ENV_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ADDRESS = re.compile(r"^(cluster|job|service)\.[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")


def _env_map(kind: str) -> Any:
    """SkyPilot turns env and secret values into strings (`8080` -> '8080'); null stays null."""

    def convert(value: Any) -> Any:
        if value is None:
            return {}
        if kind == "secrets" and isinstance(value, list):
            return {str(v): None for v in value}
        if not isinstance(value, dict):
            raise ValueError(f"{kind} must be a mapping of NAME: value, got {type(value).__name__}")
        out: dict[str, str | None] = {}
        for k, v in value.items():
            name = str(k)
            if not ENV_NAME.match(name) and not (kind == "secrets" and name.startswith("secrets:")):
                raise ValueError(
                    f"{kind[:-1]} name {name!r} is not a valid variable name "
                    "(letters, digits and _, not starting with a digit)"
                )
            if isinstance(v, dict | list):
                raise ValueError(
                    f"{kind} value of {name!r} must be a string, got a {type(v).__name__}"
                )
            out[name] = None if v is None else str(v)  # str(True) == 'True', as in SkyPilot
        return out

    return convert


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_nodes must be a whole number of nodes (1 or more), got {value!r}")
    return value


class ReadinessProbe(Frozen):
    path: str = "/"
    initial_delay_seconds: Annotated[int, Field(ge=0)] = 1200
    timeout_seconds: Annotated[int, Field(gt=0)] = 15
    endpoint_probe_interval_seconds: Annotated[int | None, Field(gt=0)] = None
    consecutive_failure_threshold_timeout: Annotated[int | None, Field(gt=0)] = None
    post_data: str | dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"path": data}
        path = data.get("path") if isinstance(data, dict) else None
        if isinstance(path, str) and not path.startswith("/"):
            raise ValueError(f"readiness_probe path must start with '/', got {data['path']!r}")
        return data


class ReplicaPolicy(Frozen):
    min_replicas: Annotated[int, Field(ge=0)]
    max_replicas: Annotated[int | None, Field(ge=0)] = None
    num_overprovision: Annotated[int | None, Field(ge=0)] = None
    target_qps_per_replica: float | dict[str, float] | None = None
    dynamic_ondemand_fallback: bool | None = None
    base_ondemand_fallback_replicas: Annotated[int | None, Field(ge=0)] = None
    spot_placer: Literal["dynamic_fallback"] | None = None
    upscale_delay_seconds: Annotated[int | None, Field(ge=0)] = None
    downscale_delay_seconds: Annotated[int | None, Field(ge=0)] = None

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaPolicy:
        hi = self.max_replicas
        if hi is not None and hi < self.min_replicas:
            raise ValueError(f"max_replicas ({hi}) is less than min_replicas ({self.min_replicas})")
        if hi is not None and hi != self.min_replicas and self.target_qps_per_replica is None:
            # SkyPilot 0.14.1 rejects this too (serve/service_spec.py).
            raise ValueError(
                "min_replicas and max_replicas differ but target_qps_per_replica is not set; "
                "set target_qps_per_replica to enable autoscaling, or make them equal"
            )
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None and self.max_replicas != self.min_replicas


class Service(Frozen):
    readiness_probe: ReadinessProbe = ReadinessProbe()
    replicas: Annotated[int | None, Field(ge=0)] = None
    replica_policy: ReplicaPolicy | None = None
    ports: Annotated[int | None, Field(ge=1, le=65535)] = None
    load_balancing_policy: (
        Literal["round_robin", "least_load", "instance_aware_least_load"] | None
    ) = None
    load_balancer: dict[str, Any] | None = None
    tls: dict[str, str] | None = None
    pool: bool | None = None

    @model_validator(mode="after")
    def _one_of_replicas(self) -> Service:
        if self.replicas is not None and self.replica_policy is not None:
            raise ValueError(
                "'replicas' and 'replica_policy' cannot both be set; use replica_policy "
                "with min_replicas/max_replicas for autoscaling, or replicas for a fixed count"
            )
        return self

    @property
    def policy(self) -> ReplicaPolicy:
        """The effective replica policy (a fixed `replicas: N` is min = max = N; default 1)."""
        if self.replica_policy is not None:
            return self.replica_policy
        n = 1 if self.replicas is None else self.replicas
        return ReplicaPolicy(min_replicas=n, max_replicas=n)


class Storage(Frozen):
    """A bucket mount in file_mounts (SkyPilot's storage schema)."""

    name: str | None = None
    source: str | list[str] | None = None
    store: str | None = None
    persistent: bool | None = None
    mode: str | None = None
    mount_options: str | None = None
    type: str | None = None
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _mode(self) -> Storage:
        # A storage with neither name nor source is refused by SkyPilot only at launch (the
        # corpus has `name:` left for the user to fill in), so it loads here too.
        if self.mode is not None and self.mode.upper() not in ("MOUNT", "COPY", "MOUNT_CACHED"):
            raise ValueError(f"mode must be MOUNT, COPY or MOUNT_CACHED, got {self.mode!r}")
        return self


class GitWorkdir(Frozen):
    url: str
    ref: str | None = None


class SkyformBlock(Frozen):
    """What SkyPilot has no field for: ordering, deletion protection, fields to leave alone."""

    depends_on: tuple[str, ...] = ()
    protect: bool = False
    ignore_changes: tuple[str, ...] = ()
    state: Literal["running", "stopped"] = "running"  # clusters: keep declared nodes stopped

    @model_validator(mode="before")
    @classmethod
    def _addresses(cls, data: Any) -> Any:
        if isinstance(data, dict):
            deps = data.get("depends_on")
            if isinstance(deps, str):
                data = {**data, "depends_on": [deps]}
            elif deps is not None and not isinstance(deps, list | tuple):
                raise ValueError(
                    f"depends_on must be an address or a list of addresses, not {deps!r}; "
                    "write e.g. depends_on: [cluster.dev]"
                )
            for dep in data.get("depends_on") or []:
                if not isinstance(dep, str) or not ADDRESS.match(dep):
                    raise ValueError(
                        f"depends_on entry {dep!r} is not an address; write KIND.NAME, "
                        "e.g. cluster.dev or job.train (KIND is cluster, job or service)"
                    )
        return data


class Task(Frozen):
    """One SkyPilot task document. Field meanings and defaults follow SkyPilot 0.14.1."""

    name: str | None = None
    workdir: str | GitWorkdir | None = None
    event_callback: str | None = None
    num_nodes: Annotated[int, BeforeValidator(_whole_number), Field(ge=1)] = 1
    resources: Resources = Resources()
    envs: Annotated[dict[str, str | None], BeforeValidator(_env_map("envs"))] = Field(
        default_factory=dict
    )
    secrets: Annotated[
        dict[str, SecretStr | None], BeforeValidator(_env_map("secrets")), Field(repr=False)
    ] = Field(default_factory=dict)
    managed_secrets: list[str | dict[str, Any]] | None = None
    file_mounts: dict[str, str | Storage] | None = None
    setup: str | None = None
    run: str | None = None
    service: Service | None = None
    pool: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    volumes: dict[str, str | dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None
    inputs: dict[str, float] | None = None
    outputs: dict[str, float] | None = None
    file_mounts_mapping: dict[str, str] | None = None
    api_server_access: bool | None = None
    metadata: dict[str, Any] | None = Field(None, alias="_metadata")
    skyform: SkyformBlock = SkyformBlock()

    @property
    def required_envs(self) -> tuple[str, ...]:
        """Env names declared with no value: inputs the user must supply (`--env NAME=...`)."""
        return tuple(k for k, v in self.envs.items() if v is None)


PIPELINE_HEADER_KEYS = frozenset(
    {"name", "execution", "primary_tasks", "termination_delay", "inter_connection", "skyform"}
)


class PipelineHeader(Frozen):
    """The first document of a multi-document file: a pipeline (serial) or job group (parallel)."""

    name: str | None = None
    execution: Literal["serial", "parallel"] = "serial"
    primary_tasks: list[str] | None = None
    termination_delay: str | int | dict[str, Any] | None = None
    inter_connection: Any = None
    skyform: SkyformBlock = SkyformBlock()
