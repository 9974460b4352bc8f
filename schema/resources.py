"""The `resources:` section of a SkyPilot task: infra, accelerators, cpus/memory, spot, ports, ...

Polymorphic YAML shapes (`A100:8`, `{A100: 8}`, `['H100:8', 'A100:8']`, `4+`, `8000-8010`) are
normalised into one typed form each, with SkyPilot 0.14.1's meaning and defaults.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schema.values import (
    Autostop,
    Infra,
    JobRecovery,
    Quantity,
    parse_autostop,
    parse_cloud,
    parse_disk_size,
    parse_infra,
    parse_job_recovery,
    parse_ports,
    parse_quantity,
)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AcceleratorRequest(Frozen):
    """One accelerator type and how many per node (fractional counts allowed, e.g. `L4:0.5`)."""

    name: str
    count: float = 1.0

    def __str__(self) -> str:
        count = int(self.count) if self.count == int(self.count) else self.count
        return f"{self.name}:{count}"


_ACC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-+]*$")


def _parse_one_accelerator(text: str) -> AcceleratorRequest:
    spec = text.strip()
    name, sep, count_text = spec.partition(":")
    name = name.strip()
    if not name or not _ACC_NAME.match(name):
        raise ValueError(
            f"bad accelerator {text!r}: expected NAME or NAME:COUNT, e.g. 'A100:8' or 'L4:0.5'"
        )
    if not sep:
        return AcceleratorRequest(name=name, count=1.0)
    try:
        count = float(count_text.strip())
    except ValueError:
        raise ValueError(
            f"bad accelerator count in {text!r}: {count_text.strip()!r} is not a number "
            "(write NAME:COUNT, e.g. 'A100:8')"
        ) from None
    return AcceleratorRequest(name=name, count=_positive_count(count, name))


def _positive_count(count: float, name: str) -> float:
    if not count > 0 or count != count or count == float("inf"):
        raise ValueError(f"accelerator count for {name!r} must be greater than 0, got {count:g}")
    return count


class AcceleratorSpec(Frozen):
    """Accelerator candidates: one, an unordered set (optimizer picks), or an ordered list."""

    candidates: tuple[AcceleratorRequest, ...] = ()
    ordered: bool = False


def parse_accelerators(value: Any) -> Any:
    """str `A100:8` / set literal `{A100:1, H100:1}` / dict / list -> AcceleratorSpec."""
    if value is None or isinstance(value, AcceleratorSpec):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            parts = [p for p in text[1:-1].split(",") if p.strip()]
            return AcceleratorSpec(candidates=tuple(_parse_one_accelerator(p) for p in parts))
        return AcceleratorSpec(candidates=(_parse_one_accelerator(text),))
    if isinstance(value, dict):
        out = []
        for name, count in value.items():
            if count is None:
                out.append(_parse_one_accelerator(str(name)))
            elif isinstance(count, bool) or not isinstance(count, int | float):
                raise ValueError(f"accelerator count for {name!r} must be a number, got {count!r}")
            else:
                acc = _parse_one_accelerator(str(name))
                out.append(acc.model_copy(update={"count": _positive_count(count, acc.name)}))
        return AcceleratorSpec(candidates=tuple(out))
    if isinstance(value, list):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(
                    f"each entry of an accelerators list must be a string like 'A100:8', "
                    f"got {item!r}"
                )
            items.append(_parse_one_accelerator(item))
        return AcceleratorSpec(candidates=tuple(items), ordered=True)
    raise ValueError(
        "accelerators must be a string ('A100:8'), a mapping ({A100: 8}) or a list "
        f"(['H100:8', 'A100:8']), got {type(value).__name__}"
    )


def _strings_map(value: Any) -> Any:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str):
                raise ValueError(f"label {k!r} must have a string value; quote it: {k}: '{v}'")
    return value


_TIERS = {
    "disk_tier": ("low", "medium", "high", "ultra", "best"),
    "network_tier": ("standard", "best"),
}


def _tier(kind: str) -> Any:
    def check(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.lower() not in _TIERS[kind]:
            raise ValueError(f"{kind} must be one of {', '.join(_TIERS[kind])}, got {value!r}")
        return value.lower()

    return check


QuantityField = Annotated[Quantity | None, BeforeValidator(parse_quantity)]


class Resources(Frozen):
    """A task's resource request. Unset fields are None; `choices()` expands candidates."""

    infra: Annotated[Infra | None, BeforeValidator(parse_infra)] = None
    accelerators: Annotated[AcceleratorSpec | None, BeforeValidator(parse_accelerators)] = None
    cpus: QuantityField = None
    memory: QuantityField = None
    instance_type: str | None = None
    use_spot: bool | None = None
    disk_size: Annotated[int | None, BeforeValidator(parse_disk_size)] = None
    disk_tier: Annotated[str | None, BeforeValidator(_tier("disk_tier"))] = None
    network_tier: Annotated[str | None, BeforeValidator(_tier("network_tier"))] = None
    local_disk: str | None = None
    max_hourly_cost: Annotated[float | None, Field(gt=0)] = None
    ports: Annotated[tuple[str, ...] | None, BeforeValidator(parse_ports)] = None
    labels: Annotated[dict[str, str] | None, BeforeValidator(_strings_map)] = None
    image_id: str | dict[str, str] | None = None
    accelerator_args: dict[str, Any] | None = None
    autostop: Annotated[Autostop | None, BeforeValidator(parse_autostop)] = None
    job_recovery: Annotated[JobRecovery | None, BeforeValidator(parse_job_recovery)] = None
    priority: Annotated[int | None, Field(ge=-1000, le=1000)] = None
    priority_class: str | None = None
    volumes: list[dict[str, Any]] | None = None
    hooks: list[dict[str, Any]] | None = None
    any_of: tuple[Resources, ...] = ()
    ordered: tuple[Resources, ...] = ()
    # SkyPilot-internal keys, accepted so that generated YAML round-trips.
    no_missing_accel_warnings: bool | None = Field(None, alias="_no_missing_accel_warnings")
    docker_login_config: dict[str, str] | None = Field(None, alias="_docker_login_config")
    is_image_managed: bool | None = Field(None, alias="_is_image_managed")
    requires_fuse: bool | None = Field(None, alias="_requires_fuse")
    cluster_config_overrides: dict[str, Any] | None = Field(None, alias="_cluster_config_overrides")

    @model_validator(mode="before")
    @classmethod
    def _legacy_and_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                f"resources must be a mapping of keys like accelerators, cpus, infra; "
                f"got {type(data).__name__}"
            )
        data = dict(data)
        if "gpus" in data:
            if "accelerators" in data:
                raise ValueError("give either 'accelerators' or its alias 'gpus', not both")
            data["accelerators"] = data.pop("gpus")
        if "ephemeral_storage" in data and "disk_size" not in data:
            data["disk_size"] = data.pop("ephemeral_storage")
        legacy = [k for k in ("cloud", "region", "zone") if k in data]
        if legacy:
            if data.get("infra") is not None:
                raise ValueError(
                    f"'infra' cannot be combined with the older {', '.join(legacy)!s}; "
                    "write everything in infra, e.g. infra: aws/us-east-1/us-east-1a"
                )
            cloud = parse_cloud(data.pop("cloud", None))
            region = data.pop("region", None)
            zone = data.pop("zone", None)
            data["infra"] = Infra(cloud=cloud, region=region, zone=zone)
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Resources:
        if self.any_of and self.ordered:
            raise ValueError("'any_of' and 'ordered' cannot be used together; pick one")
        acc = self.accelerators
        if self.ordered and acc is not None and len(acc.candidates) > 1:
            raise ValueError(
                "'ordered' cannot be combined with several accelerators; "
                "move each accelerator into its own 'ordered' entry"
            )
        if self.any_of and acc is not None and acc.ordered:
            raise ValueError(
                "a list of accelerators (an ordered preference) cannot be combined with "
                "'any_of'; use a set such as {A100: 8, H100: 8} instead"
            )
        for child in (*self.any_of, *self.ordered):
            if child.any_of or child.ordered:
                raise ValueError("'any_of'/'ordered' entries cannot nest another any_of/ordered")
        return self

    @property
    def spot(self) -> bool:
        return bool(self.use_spot)

    def merged(self, child: Resources) -> Resources:
        """`child` (an any_of/ordered entry) laid over this base, as SkyPilot merges them."""
        update: dict[str, Any] = {}
        for name in child.model_fields_set:
            if name in ("any_of", "ordered"):
                continue
            update[name] = getattr(child, name)
        if self.labels and child.labels:
            update["labels"] = {**self.labels, **child.labels}
        return self.model_copy(update={**update, "any_of": (), "ordered": ()})

    def choices(self) -> tuple[bool, tuple[Resources, ...]]:
        """(is_ordered, candidates): each candidate has at most one accelerator and no any_of."""
        ordered = bool(self.ordered) or bool(self.accelerators and self.accelerators.ordered)
        bases = [self.merged(c) for c in (self.ordered or self.any_of)] or [self]
        out: list[Resources] = []
        for base in bases:
            acc = base.accelerators
            if acc is None or len(acc.candidates) <= 1:
                out.append(base.model_copy(update={"any_of": (), "ordered": ()}))
                continue
            for cand in acc.candidates:
                single = AcceleratorSpec(candidates=(cand,))
                out.append(base.model_copy(update={"accelerators": single}))
        return ordered, tuple(out)

    @property
    def accelerator(self) -> AcceleratorRequest | None:
        """The single accelerator of a flat candidate (None when it asks for none)."""
        if self.accelerators is None or not self.accelerators.candidates:
            return None
        return self.accelerators.candidates[0]

    def summary(self) -> str:
        parts = []
        if self.infra is not None:
            parts.append(str(self.infra))
        if self.accelerators is not None:
            accs = [str(a) for a in self.accelerators.candidates]
            parts.append(accs[0] if len(accs) == 1 else "{" + ", ".join(accs) + "}")
        if self.cpus is not None:
            parts.append(f"cpus={self.cpus}")
        if self.memory is not None:
            parts.append(f"mem={self.memory}")
        if self.instance_type:
            parts.append(self.instance_type)
        if self.use_spot:
            parts.append("spot")
        return " ".join(parts) or "default"
