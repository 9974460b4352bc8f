"""Replica lifecycle statuses (named and grouped as SkyServe names them), the view of a replica
that the decision logic reads, and the order in which replicas are scaled down."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class ReplicaStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    READY = "READY"
    NOT_READY = "NOT_READY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FAILED = "FAILED"
    FAILED_INITIAL_DELAY = "FAILED_INITIAL_DELAY"
    FAILED_PROBING = "FAILED_PROBING"
    FAILED_PROVISION = "FAILED_PROVISION"
    FAILED_CLEANUP = "FAILED_CLEANUP"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_failed(self) -> bool:
        return self in _FAILED

    @property
    def is_terminal(self) -> bool:
        """Gone or going: no longer counts towards the replicas a service has."""
        return self in _TERMINAL

    @property
    def is_unrecoverable(self) -> bool:
        """A failure of the user's app itself: relaunching the same version would loop."""
        return self in (ReplicaStatus.FAILED, ReplicaStatus.FAILED_INITIAL_DELAY)


_FAILED = frozenset(
    {
        ReplicaStatus.FAILED,
        ReplicaStatus.FAILED_CLEANUP,
        ReplicaStatus.FAILED_INITIAL_DELAY,
        ReplicaStatus.FAILED_PROBING,
        ReplicaStatus.FAILED_PROVISION,
        ReplicaStatus.UNKNOWN,
    }
)
_TERMINAL = _FAILED | {ReplicaStatus.SHUTTING_DOWN, ReplicaStatus.PREEMPTED}

# Scale-down victims: a replica earlier in its lifecycle goes first, since one further along
# may be ready soon (or already serves traffic).
SCALE_DOWN_ORDER: tuple[ReplicaStatus, ...] = (
    ReplicaStatus.PENDING,
    ReplicaStatus.PROVISIONING,
    ReplicaStatus.STARTING,
    ReplicaStatus.NOT_READY,
    ReplicaStatus.READY,
)


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the autoscaler and the rollout see it."""

    replica_id: int
    status: ReplicaStatus
    version: int
    is_spot: bool = False


def scale_down_victims(replicas: Iterable[ReplicaView], count: int) -> list[int]:
    """Ids of `count` live replicas to remove: earliest status, then oldest version, then the
    most recently launched (highest id), since an older launch is likelier to be ready soon."""
    live = [r for r in replicas if r.status in SCALE_DOWN_ORDER]
    live.sort(key=lambda r: (SCALE_DOWN_ORDER.index(r.status), r.version, -r.replica_id))
    return [r.replica_id for r in live[: max(0, count)]]
