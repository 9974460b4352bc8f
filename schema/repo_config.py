"""`skyform.yaml`: the repo's search space (infra), policies, reconcile settings and state URL."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, model_validator

from schema.errors import Diagnostic, SpecError
from schema.loader import validate_document
from schema.resources import Frozen
from schema.task import ADDRESS
from schema.values import Infra, parse_infra
from schema.yaml_source import Positions, decode, parse_documents

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or '30s', '10m', '1h' -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 60, '30s', '10m' or '1h', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"a duration must be greater than 0, got {value!r}")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"a duration must be greater than 0, got {value!r}")
        return seconds
    raise ValueError(f"expected a duration such as 60, '30s', '10m' or '1h', got {value!r}")


Seconds = Annotated[float, BeforeValidator(parse_duration)]


class Pricing(Frozen):
    """$/h for capacity a repo already owns (Kubernetes, this machine); SkyPilot's default is 0."""

    cpu: Annotated[float, Field(ge=0)] = 0.0
    memory: Annotated[float, Field(ge=0)] = 0.0  # per GiB-hour
    accelerators: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


class Caps(Frozen):
    """Upper bounds on what Skyform may use of a place (e.g. this machine), so that failover
    can be seen on one machine; unset dimensions are what the place has."""

    cpus: Annotated[float | None, Field(gt=0)] = None
    memory: Annotated[float | None, Field(gt=0)] = None  # GiB
    gpus: Annotated[int | None, Field(ge=0)] = None


def _nonblank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty; leave the key out for the default")
    return value


NonBlank = Annotated[str, BeforeValidator(_nonblank)]
KUBERNETES_ONLY = ("queue", "image", "schedule_timeout")


class InfraEntry(Frozen):
    """One place in the search space: `aws`, `gcp/us-central1`, `k8s/ctx`, `local`.

    Kubernetes contexts also take `queue` (a Kueue LocalQueue: the pods get its queue-name
    label), `image` (the default image when a task has no `image_id: docker:...`) and
    `schedule_timeout` (how long a gang may wait to be scheduled; seconds or '30s', '5m')."""

    infra: Annotated[Infra, BeforeValidator(parse_infra)]
    pricing: Pricing | None = None
    namespace: str | None = None
    caps: Caps | None = None
    queue: NonBlank | None = None
    image: NonBlank | None = None
    schedule_timeout: Seconds | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"infra": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _kubernetes_only(self) -> InfraEntry:
        given = [key for key in KUBERNETES_ONLY if getattr(self, key) is not None]
        if given and self.infra.cloud != "kubernetes":
            raise ValueError(
                f"{', '.join(given)} only apply to Kubernetes contexts (infra: k8s/<context>), "
                f"not to {self.infra}"
            )
        return self

    def __str__(self) -> str:
        return str(self.infra)


def _addresses(value: Any) -> Any:
    if isinstance(value, list):
        for a in value:
            if not isinstance(a, str) or not ADDRESS.match(a):
                raise ValueError(f"{a!r} is not an address; write KIND.NAME, e.g. cluster.dev")
    return value


class Policy(Frozen):
    max_hourly_cost: Annotated[float | None, Field(gt=0)] = None
    prune: bool = False
    protect: Annotated[tuple[str, ...], BeforeValidator(_addresses)] = ()
    drift: Literal["correct", "accept", "alert"] = "correct"


class Reconcile(Frozen):
    branch: str = "main"
    poll_interval: Seconds = 60.0
    drift_interval: Seconds = 600.0
    health_interval: Seconds = 30.0  # job and replica controllers kept alive
    auto_apply: bool = True
    self_heal: bool = True


def _default_infra() -> tuple[InfraEntry, ...]:
    return (InfraEntry(infra=Infra(cloud="local")),)


class RepoConfig(Frozen):
    infra: tuple[InfraEntry, ...] = Field(default_factory=_default_infra)
    policy: Policy = Policy()
    reconcile: Reconcile = Reconcile()
    state: str | None = None
    _positions: Positions = PrivateAttr(default_factory=Positions)

    @model_validator(mode="before")
    @classmethod
    def _infra_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("infra"), str):
            data = {**data, "infra": [data["infra"]]}
        return data

    def line_of(self, *path: str) -> int:
        return self._positions.locate(path)[0]


def load_repo_config(raw: bytes, file: str) -> RepoConfig:
    docs = [d for d in parse_documents(decode(raw, file), file) if d.data is not None]
    if not docs:
        return RepoConfig()
    if len(docs) > 1:
        line, _ = docs[1].positions.locate(())
        raise SpecError(
            [Diagnostic(file, line, 1, f"{file} must hold one YAML document", "remove the '---'")]
        )
    diags: list[Diagnostic] = []
    config = validate_document(RepoConfig, docs[0], diags)
    if config is None:
        raise SpecError(diags)
    config._positions = docs[0].positions
    return config
