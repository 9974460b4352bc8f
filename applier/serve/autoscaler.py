"""Autoscaling decisions on request rate, with SkyServe's hysteresis and on-demand fallback.

Pure: no I/O, no clock, no global state. The caller feeds request timestamps and the replicas it
sees, passes the time in, and carries out the returned `Decision`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from applier.serve.rollout import outdated_to_retire
from applier.serve.status import ReplicaStatus, ReplicaView, scale_down_victims
from schema.task import ReplicaPolicy

QPS_WINDOW_SECONDS = 60
DECISION_INTERVAL_SECONDS = 20
# While the target is zero, decide faster so the first request brings a replica up sooner.
NO_REPLICA_DECISION_INTERVAL_SECONDS = 5
DEFAULT_UPSCALE_DELAY_SECONDS = 300
DEFAULT_DOWNSCALE_DELAY_SECONDS = 1200


@dataclass(frozen=True)
class ScaleUp:
    """Launch one replica; `use_spot` overrides the task's resources (None: as written)."""

    use_spot: bool | None = None


@dataclass(frozen=True)
class Decision:
    """What to do now. `scale_down` lists replica ids, outdated versions first."""

    target: int
    qps: float
    scale_up: tuple[ScaleUp, ...] = ()
    scale_down: tuple[int, ...] = ()
    halted: str | None = None


class RequestRateAutoscaler:
    """Target = ceil(qps / target_qps_per_replica) clipped to [min, max], plus num_overprovision.

    A new target takes effect only after enough consecutive decisions (one per decision
    interval) agree: upscale_delay/20 of them to go up, downscale_delay/20 to go down.
    """

    def __init__(self, policy: ReplicaPolicy, *, version: int = 1) -> None:
        self._timestamps: list[float] = []
        self._last_step_at: float | None = None
        self.version = version
        self._ever_ready_version = version - 1
        self._apply_policy(policy)
        self.target_num_replicas = policy.min_replicas
        self.upscale_counter = 0
        self.downscale_counter = 0

    def _apply_policy(self, policy: ReplicaPolicy) -> None:
        self.policy = policy
        self.min_replicas = policy.min_replicas
        self.max_replicas = (
            policy.max_replicas if policy.max_replicas is not None else policy.min_replicas
        )
        up = policy.upscale_delay_seconds
        down = policy.downscale_delay_seconds
        up = DEFAULT_UPSCALE_DELAY_SECONDS if up is None else up
        down = DEFAULT_DOWNSCALE_DELAY_SECONDS if down is None else down
        self.upscale_threshold = int(up / DECISION_INTERVAL_SECONDS)
        self.downscale_threshold = int(down / DECISION_INTERVAL_SECONDS)

    def update_version(self, version: int, policy: ReplicaPolicy, now: float) -> None:
        """A new service version: its target is set at once (no hysteresis), counters reset."""
        if version <= self.version:
            raise ValueError(f"version {version} is not newer than the current {self.version}")
        self.version = version
        self._apply_policy(policy)
        self.target_num_replicas = self._desired(now)
        self.upscale_counter = self.downscale_counter = 0

    def collect(self, timestamps: Iterable[float], now: float) -> None:
        """Add request arrival times (the load balancer's) and forget those outside the window."""
        self._timestamps.extend(timestamps)
        self._timestamps.sort()
        self._prune(now)

    def _prune(self, now: float) -> None:
        cut = bisect.bisect_left(self._timestamps, now - QPS_WINDOW_SECONDS)
        if cut:
            del self._timestamps[:cut]

    def qps(self, now: float) -> float:
        self._prune(now)
        return len(self._timestamps) / QPS_WINDOW_SECONDS

    @property
    def final_target(self) -> int:
        return self.target_num_replicas + (self.policy.num_overprovision or 0)

    @property
    def decision_interval(self) -> float:
        if self.final_target == 0:
            return NO_REPLICA_DECISION_INTERVAL_SECONDS
        return DECISION_INTERVAL_SECONDS

    def _clip(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))

    def _desired(self, now: float) -> int:
        per_replica = self.policy.target_qps_per_replica
        if per_replica is None:
            return self.min_replicas
        if isinstance(per_replica, dict):
            # Instance-aware targets need each replica's accelerator; until replicas carry
            # it, scale on the largest per-accelerator target (SkyServe's upscale rule).
            per_replica = max(per_replica.values())
        return self._clip(math.ceil(self.qps(now) / per_replica))

    def _step(self, now: float) -> None:
        desired = self._desired(now)
        current = self.target_num_replicas
        if current == 0:
            # Nothing is serving: waiting out the upscale delay would only drop requests.
            self.target_num_replicas = desired
        elif desired > current:
            self.upscale_counter += 1
            self.downscale_counter = 0
            if self.upscale_counter >= self.upscale_threshold:
                self.upscale_counter = 0
                self.target_num_replicas = desired
        elif desired < current:
            self.downscale_counter += 1
            self.upscale_counter = 0
            if self.downscale_counter >= self.downscale_threshold:
                self.downscale_counter = 0
                self.target_num_replicas = desired
        else:
            self.upscale_counter = self.downscale_counter = 0

    def evaluate(self, replicas: Sequence[ReplicaView], now: float) -> Decision:
        """Decide; callable as often as wanted, the target moves at most once per interval."""
        if self._last_step_at is None or now - self._last_step_at >= self.decision_interval:
            self._last_step_at = now
            self._step(now)
        qps = self.qps(now)
        latest = [r for r in replicas if r.version == self.version]
        if any(r.status is ReplicaStatus.READY for r in latest):
            self._ever_ready_version = self.version
        if self._ever_ready_version < self.version:
            broken = [r.replica_id for r in latest if r.status.is_unrecoverable]
            if broken:
                # Relaunching a version whose app fails would loop forever; wait for a fix.
                reason = (
                    f"version {self.version} never became ready and replica(s) {broken} "
                    "failed in the app itself; fix the service and push a new version"
                )
                return Decision(self.final_target, qps, halted=reason)
        retire = outdated_to_retire(replicas, self.version, self.final_target)
        live = [r for r in latest if not r.status.is_terminal]
        ups, downs = self._replica_actions(live)
        return Decision(self.final_target, qps, tuple(ups), tuple(retire + downs))

    def _replica_actions(self, live: list[ReplicaView]) -> tuple[list[ScaleUp], list[int]]:
        """Launches and removals among the latest version's live replicas."""
        want = self.final_target
        if len(live) < want:
            return [ScaleUp() for _ in range(want - len(live))], []
        return [], scale_down_victims(live, len(live) - want)


class FallbackRequestRateAutoscaler(RequestRateAutoscaler):
    """Spot replicas with on-demand ones as a floor (`base_ondemand_fallback_replicas`) and,
    with `dynamic_ondemand_fallback`, standing in for spot replicas that are not ready."""

    def _replica_actions(self, live: list[ReplicaView]) -> tuple[list[ScaleUp], list[int]]:
        base = self.policy.base_ondemand_fallback_replicas or 0
        spot = [r for r in live if r.is_spot]
        ondemand = [r for r in live if not r.is_spot]
        ready_spot = sum(1 for r in spot if r.status is ReplicaStatus.READY)

        ups: list[ScaleUp] = []
        downs: list[int] = []
        spot_wanted = self.final_target - base
        if len(spot) < spot_wanted:
            ups += [ScaleUp(use_spot=True) for _ in range(spot_wanted - len(spot))]
        else:
            downs += scale_down_victims(spot, len(spot) - spot_wanted)

        ondemand_wanted = base
        if self.policy.dynamic_ondemand_fallback:
            # Ready, not merely live: a spot replica stuck provisioning serves nobody.
            ondemand_wanted += max(0, spot_wanted - ready_spot)
        # Over-provisioned capacity is never bought on demand.
        ondemand_wanted = min(ondemand_wanted, self.target_num_replicas)
        if len(ondemand) < ondemand_wanted:
            ups += [ScaleUp(use_spot=False) for _ in range(ondemand_wanted - len(ondemand))]
        else:
            downs += scale_down_victims(ondemand, len(ondemand) - ondemand_wanted)
        return ups, downs


def autoscaler_for(policy: ReplicaPolicy, *, version: int = 1) -> RequestRateAutoscaler:
    """The autoscaler SkyServe would pick for this policy."""
    fallback = (
        bool(policy.dynamic_ondemand_fallback) or (policy.base_ondemand_fallback_replicas or 0) > 0
    )
    cls = FallbackRequestRateAutoscaler if fallback else RequestRateAutoscaler
    return cls(policy, version=version)
