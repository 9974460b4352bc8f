"""Value types of placement: a normalized resource request, search-space targets, live offerings,
blocked placements, and the ranked placements the optimizer returns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Amount:
    """cpus/memory: exactly `value`, at least (`4+`), or for memory GiB per vCPU (`4x`)."""

    value: float
    at_least: bool = False
    per_cpu: bool = False

    def admits(self, have: float | None, vcpus: float | None = None) -> bool:
        if have is None:
            return False
        if self.per_cpu:
            return vcpus is not None and have >= vcpus * self.value
        return have >= self.value if self.at_least else have == self.value

    def __str__(self) -> str:
        num = int(self.value) if self.value == int(self.value) else self.value
        return f"{num}{'x' if self.per_cpu else ''}{'+' if self.at_least else ''}"


@dataclass(frozen=True)
class Request:
    """One flat candidate of a task's resources (at most one accelerator, no any_of/ordered)."""

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    accelerator: str | None = None
    accelerator_count: float = 1.0
    cpus: Amount | None = None
    memory: Amount | None = None
    instance_type: str | None = None
    use_spot: bool = False
    max_hourly_cost: float | None = None
    tpu_vm: bool = True

    def describe(self) -> str:
        parts = []
        if self.cloud or self.region or self.zone:
            parts.append("/".join(p or "*" for p in (self.cloud, self.region, self.zone) if p))
        if self.accelerator:
            count = self.accelerator_count
            parts.append(f"{self.accelerator}:{int(count) if count == int(count) else count}")
        if self.cpus:
            parts.append(f"cpus={self.cpus}")
        if self.memory:
            parts.append(f"memory={self.memory}")
        if self.instance_type:
            parts.append(self.instance_type)
        if self.use_spot:
            parts.append("spot")
        return " ".join(parts) or "default resources"


@dataclass(frozen=True)
class Target:
    """One search-space entry: `aws`, `gcp/us-central1`, `aws/us-east-1/use1-az1`, `k8s/ctx`."""

    cloud: str
    region: str | None = None
    zone: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


_ALIASES = {"k8s": "kubernetes"}


def parse_target(text: str) -> Target:
    """Parse an infra string; a Kubernetes context may itself contain '/'."""
    head, _, rest = text.strip().partition("/")
    cloud = _ALIASES.get(head.lower(), head.lower())
    if not cloud or cloud == "*":
        raise ValueError(f"search-space entry {text!r} must name a cloud, e.g. 'aws/us-east-1'")
    if cloud == "kubernetes":
        return Target(cloud, rest or None)
    parts = rest.split("/") if rest else []
    if len(parts) > 2 or any(not p for p in parts):
        raise ValueError(f"search-space entry {text!r} must look like cloud[/region[/zone]]")
    region = parts[0] if parts and parts[0] != "*" else None
    zone = parts[1] if len(parts) > 1 and parts[1] != "*" else None
    return Target(cloud, region, zone)


@dataclass(frozen=True)
class LiveOffering:
    """Free capacity seen live on Kubernetes or this machine: `nodes` nodes of this shape."""

    cloud: str  # "kubernetes" or "local"
    region: str | None  # the Kubernetes context; None for local
    cpus: float
    memory_gib: float
    accelerator: str | None = None
    accelerator_count: int = 0
    hourly_price: float = 0.0  # per node; unpriced capacity is free, as in SkyPilot
    nodes: int = 1


@dataclass(frozen=True)
class Blocked:
    """A placement to skip (a recent capacity error). None fields match anything."""

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    accelerator: str | None = None
    use_spot: bool | None = None

    def blocks(self, p: Placement) -> bool:
        acc = self.accelerator
        return (
            (self.cloud is None or self.cloud == p.cloud)
            and (self.region is None or self.region == p.region)
            and (self.zone is None or self.zone == p.zone)
            and (self.instance_type is None or self.instance_type == p.instance_type)
            and (acc is None or (p.accelerator or "").lower() == acc.lower())
            and (self.use_spot is None or self.use_spot == p.use_spot)
        )


@dataclass(frozen=True)
class Placement:
    """One launchable place for a task: where, what, and its price per hour."""

    cloud: str
    region: str | None
    zone: str | None
    instance_type: str
    accelerator: str | None
    accelerator_count: float
    use_spot: bool
    hourly_cost: float  # per node
    num_nodes: int = 1
    vcpus: float | None = None
    memory_gib: float | None = None

    @property
    def total_hourly_cost(self) -> float:
        return self.hourly_cost * self.num_nodes

    def rank_key(self) -> tuple[float, str, int, str, str, str]:
        # AWS tries US regions first when prices tie (aws_catalog's "US first" ordering).
        us_last = 0 if self.cloud == "aws" and (self.region or "").startswith("us-") else 1
        return (
            self.total_hourly_cost,
            self.cloud,
            us_last,
            self.region or "",
            self.zone or "",
            self.instance_type,
        )

    def accelerators(self) -> dict[str, float] | None:
        if not self.accelerator:
            return None
        count = self.accelerator_count
        return {self.accelerator: int(count) if count == int(count) else count}

    def as_dict(self) -> dict[str, object]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "instance_type": self.instance_type,
            "accelerators": self.accelerators(),
            "use_spot": self.use_spot,
            "num_nodes": self.num_nodes,
            "hourly_cost": round(self.total_hourly_cost, 6),
        }


@dataclass(frozen=True)
class PlacementResult:
    """Ranked candidates (the first is the choice, the rest the failover order) or why none."""

    candidates: tuple[Placement, ...]
    reason: str | None = None
    reason_code: str | None = None  # "infra-not-enabled" | "no-feasible-offer" | "all-blocked"

    @property
    def choice(self) -> Placement | None:
        return self.candidates[0] if self.candidates else None
