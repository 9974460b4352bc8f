"""Rolling updates, create-before-destroy: which old-version replicas may go, given the new ones.

The new version's replicas are launched by the autoscaler (they count towards the target); this
module only decides when the old ones may be retired, so the ready count never dips.
"""

from __future__ import annotations

from collections.abc import Sequence

from applier.serve.status import ReplicaStatus, ReplicaView, scale_down_victims


def outdated_to_retire(
    replicas: Sequence[ReplicaView], latest_version: int, target: int
) -> list[int]:
    """Ids of old-version replicas to retire now.

    Old replicas are kept while `ready new < target`: exactly `target - ready new` of them stay,
    and the ones let go first are those not serving (pending, starting, not ready), so the ready
    replicas after retiring are never fewer than min(target, ready before).
    """
    new_ready = sum(
        1 for r in replicas if r.version == latest_version and r.status is ReplicaStatus.READY
    )
    old = [r for r in replicas if r.version != latest_version and not r.status.is_terminal]
    keep = max(0, target - new_ready)
    return scale_down_victims(old, len(old) - keep)
