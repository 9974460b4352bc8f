"""Small value types of the task schema and the parsers that normalise their YAML spellings."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

# SkyPilot 0.14.1's clouds (sky/skylet/constants.py ALL_CLOUDS) plus Skyform's `local`.
KNOWN_CLOUDS = (
    "aws", "azure", "gcp", "ibm", "lambda", "scp", "oci", "kubernetes", "runpod", "vast",
    "vsphere", "cudo", "fluidstack", "paperspace", "do", "nebius", "hyperbolic", "seeweb",
    "shadeform", "primeintellect", "ssh", "slurm", "mithril", "yotta", "spheron", "verda",
    "daytona", "jarvislabs", "hyperstack", "lium", "coreweave", "together", "local",
)  # fmt: skip
_CLOUD_ALIASES = {"k8s": "kubernetes"}


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Infra(Value):
    """Where: cloud (None = any), region (a Kubernetes context for kubernetes), zone."""

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None

    def __str__(self) -> str:
        parts = [self.cloud or "*"]
        if self.region or self.zone:
            parts.append(self.region or "*")
        if self.zone:
            parts.append(self.zone)
        return "/".join(parts)


def nearest(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def parse_cloud(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"cloud must be a name such as aws, gcp or kubernetes, got {value!r}")
    name = value.strip().lower()
    name = _CLOUD_ALIASES.get(name, name)
    if name == "*":
        return None
    if name not in KNOWN_CLOUDS:
        guess = nearest(name, KNOWN_CLOUDS)
        hint = f"; did you mean {guess!r}?" if guess else f"; known: {', '.join(KNOWN_CLOUDS)}"
        raise ValueError(f"unknown cloud {value!r}{hint}")
    return name


def parse_infra(value: Any) -> Any:
    """`aws`, `aws/us-east-1/us-east-1a`, `*/us-east-1`, `k8s/ctx` (contexts may hold '/')."""
    if value is None or isinstance(value, Infra):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"infra must be a string like 'aws/us-east-1' or 'k8s/my-context', got {value!r}"
        )
    text = value.strip()
    head, _, rest = text.partition("/")
    cloud = parse_cloud(head)
    if cloud == "kubernetes":
        return Infra(cloud=cloud, region=rest or None)
    parts = rest.split("/") if rest else []
    if len(parts) > 2 or any(p == "" for p in parts):
        raise ValueError(f"infra {value!r} must look like cloud[/region[/zone]]")
    region = parts[0] if parts and parts[0] != "*" else None
    zone = parts[1] if len(parts) > 1 and parts[1] != "*" else None
    return Infra(cloud=cloud, region=region, zone=zone)


class Quantity(Value):
    """`4` (exactly 4), `4+` (at least 4); for memory also `4x` (GiB per vCPU)."""

    value: float
    at_least: bool = False
    per_cpu: bool = False

    def __str__(self) -> str:
        num = int(self.value) if self.value == int(self.value) else self.value
        return f"{num}{'x' if self.per_cpu else ''}{'+' if self.at_least else ''}"


_QTY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?\s*(x)?\s*(\+)?\s*$", re.I)
_UNIT_GIB = {"": 1.0, "b": 1 / 1024**3, "k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}


def parse_quantity(value: Any) -> Any:
    if value is None or isinstance(value, Quantity):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a number like 4 or a string like '4+', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return Quantity(value=float(value))
    if isinstance(value, str):
        m = _QTY.match(value)
        if m:
            number, unit, per_cpu, plus = m.groups()
            amount = float(number) * _UNIT_GIB[(unit or "")[:1].lower()]
            if amount <= 0:
                raise ValueError(f"must be greater than 0, got {value!r}")
            return Quantity(value=amount, at_least=bool(plus), per_cpu=bool(per_cpu))
    raise ValueError(
        f"expected a number like 4, or '4+' for at least 4 (memory also takes '32GB+'), "
        f"got {value!r}"
    )


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.I)


def parse_disk_size(value: Any) -> Any:
    """An int in GB or a size string like '256GB' / '1TB' -> GB (int)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"disk_size must be a size in GB such as 256 or '1TB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"disk_size must be greater than 0, got {value}")
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        factor = {"": 1.0, "k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}
        size = int(int(m.group(1)) * factor[(m.group(2) or "")[:1].lower()])
        if size <= 0:
            raise ValueError(f"disk_size must be at least 1 GB, got {value!r}")
        return size
    raise ValueError(f"disk_size must be a size in GB such as 256 or '1TB', got {value!r}")


def _one_port(value: Any) -> str:
    text = str(value).strip() if isinstance(value, int | str) else None
    if isinstance(value, bool) or text is None:
        raise ValueError(f"a port must be a number or a range like '8000-8010', got {value!r}")
    m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
    if not m:
        raise ValueError(f"a port must be a number or a range like '8000-8010', got {value!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise ValueError(f"port {p} is out of range 1-65535")
    if hi < lo:
        raise ValueError(f"port range {text!r} ends before it starts; write '{hi}-{lo}'")
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def parse_ports(value: Any) -> Any:
    if value is None or isinstance(value, tuple):
        return value
    items = value if isinstance(value, list) else [value]
    return tuple(_one_port(v) for v in items)


class Autostop(Value):
    """SkyPilot's autostop: idle minutes before stopping (or tearing down, with `down`)."""

    enabled: bool = True
    idle_minutes: int = 5  # SkyPilot's default when autostop is on without minutes
    down: bool = False
    wait_for: str | None = None
    hook: str | None = None
    hook_timeout: int | None = None


_TIME = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.I)
_MINUTES = {"": 1.0, "s": 1 / 60, "m": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0}


def parse_autostop(value: Any) -> Any:
    if value is None or isinstance(value, Autostop):
        return value
    if isinstance(value, bool):
        return Autostop(enabled=value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"autostop minutes must be 0 or more, got {value}")
        return Autostop(idle_minutes=value)
    if isinstance(value, str) and (m := _TIME.match(value)):
        return Autostop(idle_minutes=int(int(m.group(1)) * _MINUTES[m.group(2).lower()]))
    if isinstance(value, dict):
        return Autostop.model_validate(value)
    raise ValueError(
        f"autostop must be true/false, minutes (10), a duration ('1h') or a mapping "
        f"with idle_minutes/down, got {value!r}"
    )


RECOVERY_STRATEGIES = ("FAILOVER", "EAGER_NEXT_REGION")


class JobRecovery(Value):
    """Managed-job recovery: strategy (None = SkyPilot's default EAGER_NEXT_REGION)."""

    strategy: str | None = None
    max_restarts_on_errors: int = 0
    recover_on_exit_codes: tuple[int, ...] = ()


def _strategy(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"job_recovery strategy must be a string, got {value!r}")
    name = value.strip().upper()
    if name == "NONE":
        return None
    if name not in RECOVERY_STRATEGIES:
        raise ValueError(
            f"unknown job_recovery strategy {value!r}; use one of {', '.join(RECOVERY_STRATEGIES)}"
        )
    return name


def parse_job_recovery(value: Any) -> Any:
    if value is None or isinstance(value, JobRecovery):
        return value
    if isinstance(value, str):
        return JobRecovery(strategy=_strategy(value))
    if not isinstance(value, dict):
        raise ValueError(f"job_recovery must be a strategy name or a mapping, got {value!r}")
    data = dict(value)
    unknown = set(data) - {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"}
    if unknown:
        raise ValueError(
            f"unknown job_recovery key(s) {sorted(unknown)}; "
            "allowed: strategy, max_restarts_on_errors, recover_on_exit_codes"
        )
    restarts = data.get("max_restarts_on_errors", 0)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"max_restarts_on_errors must be an integer >= 0, got {restarts!r}")
    codes = data.get("recover_on_exit_codes", [])
    codes = [codes] if isinstance(codes, int) and not isinstance(codes, bool) else codes
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in codes
    ):
        raise ValueError("recover_on_exit_codes must be an exit code 0-255 or a list of them")
    if len(set(codes)) != len(codes):
        raise ValueError("recover_on_exit_codes lists an exit code twice")
    return JobRecovery(
        strategy=_strategy(data.get("strategy")),
        max_restarts_on_errors=restarts,
        recover_on_exit_codes=tuple(codes),
    )
