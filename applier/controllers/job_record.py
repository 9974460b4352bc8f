"""The managed-job controller's persisted record (status.json) and its pure rules: per-attempt
skyform ids, recovery ordering (FAILOVER / EAGER_NEXT_REGION), the restart decision, log archiving.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from applier.provider import Handle, Placement, Provider, Selector
from schema.errors import SkyformError
from schema.task import Task
from schema.values import JobRecovery

PENDING = "PENDING"
STARTING = "STARTING"
RUNNING = "RUNNING"
RECOVERING = "RECOVERING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
FAILED_SETUP = "FAILED_SETUP"
FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"
CANCELLED = "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, FAILED_SETUP, FAILED_NO_RESOURCE, CANCELLED})

FAILOVER = "FAILOVER"
EAGER_NEXT_REGION = "EAGER_NEXT_REGION"

MAX_ATTEMPTS_KEPT = 200  # recovery retries forever; keep status.json bounded

_ATTEMPT_ID = re.compile(r"^([0-9a-f]{8})-(.+)-s(\d+)-a(\d+)$")


def _digest8(job_id: str, stage: int, seq: int) -> str:
    return hashlib.sha256(f"{job_id}/s{stage}/a{seq}".encode()).hexdigest()[:8]


def attempt_id(job_id: str, stage: int, seq: int) -> str:
    """The skyform id of launch number `seq` (of stage `stage`) of the job `job_id`.

    Deterministic, so a restarted controller re-issuing the same launch is adopted by the
    provider. It starts with a hash because providers name resources by the id's first 8
    characters (the local provider's `<address>-<id8>` directory): attempts must differ there.
    """
    return f"{_digest8(job_id, stage, seq)}-{job_id}-s{stage}-a{seq}"


def parse_attempt_id(skyform_id: str) -> tuple[str, int, int] | None:
    """(job id, stage, seq) of an id made by `attempt_id`; None for any other id."""
    m = _ATTEMPT_ID.match(skyform_id)
    if m is None:
        return None
    job_id, stage, seq = m.group(2), int(m.group(3)), int(m.group(4))
    return (job_id, stage, seq) if m.group(1) == _digest8(job_id, stage, seq) else None


def owned_by(job_id: str, skyform_id: str) -> bool:
    """Whether a provider resource was launched by the controller of job `job_id`."""
    parsed = parse_attempt_id(skyform_id)
    return parsed is not None and parsed[0] == job_id


def recovery_of(task: Task) -> JobRecovery:
    """The task's `job_recovery` (SkyPilot requires every candidate resource to agree, so the
    first one set wins), else SkyPilot's defaults."""
    res = task.resources
    for r in (res, *res.any_of, *res.ordered):
        if r.job_recovery is not None:
            return r.job_recovery
    return JobRecovery()


def recovery_order(
    candidates: Sequence[Placement], previous: Placement | None, strategy: str | None
) -> list[Placement]:
    """Candidates in the order one recovery pass tries them.

    FAILOVER: the lost placement first (same cloud and region), then the rest in plan order.
    EAGER_NEXT_REGION (the default, strategy None): every other (cloud, region) first in plan
    order, the lost region last; SkyPilot blocks it for one launch and then searches everything.
    """
    if previous is None:
        return list(candidates)
    if (strategy or EAGER_NEXT_REGION) == FAILOVER:
        return [previous, *(c for c in candidates if c != previous)]
    lost = (previous.cloud, previous.region)
    return [c for c in candidates if (c.cloud, c.region) != lost] + [
        c for c in candidates if (c.cloud, c.region) == lost
    ]


def restart_decision(
    recovery: JobRecovery, exit_codes: Sequence[int | None], error_restarts: int
) -> tuple[bool, bool]:
    """(restart?, counted against max_restarts_on_errors?) after a user-code failure, as
    SkyPilot's `should_restart_on_failure`: a listed exit code always restarts, uncounted."""
    if any(c in recovery.recover_on_exit_codes for c in exit_codes if c is not None):
        return True, False
    if error_restarts < recovery.max_restarts_on_errors:
        return True, True
    return False, False


def archive_logs(provider: Provider, handle: Handle, dest: Path) -> list[dict[str, Any]]:
    """Copy a resource's log files to `dest` before it is terminated (terminate deletes them);
    returns the copies as `log_paths` entries."""
    try:
        logs = provider.log_paths(handle)
    except SkyformError:
        logs = []
    out: list[dict[str, Any]] = []
    for log in logs:
        if not log.path.is_file():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"rank{log.rank}-{log.stage}.log"
        shutil.copyfile(log.path, target)
        out.append({"rank": log.rank, "stage": log.stage, "path": str(target)})
    return out


@dataclass
class JobRecord:
    """What status.json holds; see `applier.controllers.job` for the meaning of each field."""

    status: str = PENDING
    address: str = ""
    stage: int = 0
    stages: int = 0
    stage_names: list[str | None] = field(default_factory=list)
    placement: dict[str, Any] | None = None
    handle: dict[str, Any] | None = None
    job_state: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    recoveries: int = 0
    restarts: int = 0
    error_restarts: int = 0
    message: str = ""
    log_paths: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    launch_seq: int = 0
    launch_passes: int = 0
    launch_reason: str = "launch"
    previous_placement: dict[str, Any] | None = None
    task_id: str | None = None
    retiring: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def add_attempt(self, entry: dict[str, Any]) -> None:
        self.attempts.append(entry)
        del self.attempts[:-MAX_ATTEMPTS_KEPT]


def where(handle: Handle) -> str:
    return handle.placement.describe()


def live_logs(provider: Provider, handle: Handle) -> list[dict[str, Any]]:
    try:
        logs = provider.log_paths(handle)
    except SkyformError:
        return []
    return [{"rank": log.rank, "stage": log.stage, "path": str(log.path)} for log in logs]


def exit_codes(provider: Provider, handle: Handle) -> list[int | None]:
    try:
        found = provider.observe(Selector(skyform_id=handle.skyform_id))
    except SkyformError:
        return []
    return [n.exit_code for res in found for n in res.nodes]


def managed_task_id(address: str, stage: int, now: float) -> str:
    """SKYPILOT_TASK_ID in SkyPilot's managed-job form,
    `sky-managed-<time>_<job name>_<job id>-<task id>`, made once per stage."""
    stamp = datetime.fromtimestamp(now).strftime("%Y-%m-%d-%H-%M-%S-%f")
    return f"sky-managed-{stamp}_{address.partition('.')[2]}_1-{stage}"
