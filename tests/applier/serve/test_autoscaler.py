"""Autoscaler decisions from synthetic request timestamps and an explicit clock: target math,
clipping, hysteresis both ways, the scale-down order, on-demand fallback and rolling updates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from applier.serve.autoscaler import (
    FallbackRequestRateAutoscaler,
    RequestRateAutoscaler,
    ScaleUp,
    autoscaler_for,
)
from applier.serve.rollout import outdated_to_retire
from applier.serve.status import ReplicaStatus, ReplicaView, scale_down_victims
from schema.task import ReplicaPolicy, Service

T0 = 10_000.0
R = ReplicaStatus


def policy(**kw) -> ReplicaPolicy:
    base = {"min_replicas": 1, "max_replicas": 10, "target_qps_per_replica": 1.0}
    return ReplicaPolicy(**{**base, **kw})


def load(scaler: RequestRateAutoscaler, qps: float, now: float, since: float | None = None) -> None:
    """Requests at `qps`, evenly spread from `since` (default: a minute ago) to `now`."""
    start = now - 60 if since is None else since
    n = round(qps * (now - start))
    scaler.collect([start + (now - start) * (i + 0.5) / n for i in range(n)], now)


def ready(n: int, version: int = 1, first_id: int = 1, spot: bool = False) -> list[ReplicaView]:
    return [ReplicaView(first_id + i, R.READY, version, spot) for i in range(n)]


def instant(**kw) -> RequestRateAutoscaler:
    """An autoscaler with no hysteresis, to test the target arithmetic on its own."""
    return autoscaler_for(policy(upscale_delay_seconds=0, downscale_delay_seconds=0, **kw))


@pytest.mark.parametrize(
    ("qps", "per_replica", "expected"),
    [(2.5, 1.0, 3), (3.0, 1.0, 3), (0.1, 1.0, 1), (10.0, 2.5, 4), (0.0, 1.0, 1), (99.0, 1.0, 10)],
)
def test_target_is_ceil_of_qps_over_target_clipped(qps, per_replica, expected):
    scaler = instant(target_qps_per_replica=per_replica)
    load(scaler, qps, T0)
    assert scaler.qps(T0) == pytest.approx(qps)
    assert scaler.evaluate([], T0).target == expected


def test_min_clip_and_overprovision():
    scaler = instant(min_replicas=2, num_overprovision=1)
    decision = scaler.evaluate(ready(1), T0)
    assert decision.target == 3
    assert decision.scale_up == (ScaleUp(), ScaleUp())


def test_fixed_replicas_without_target_qps():
    scaler = autoscaler_for(Service(replicas=3).policy)
    load(scaler, 50, T0)
    assert scaler.evaluate([], T0).target == 3


def test_dict_target_qps_scales_on_the_largest_target():
    scaler = instant(target_qps_per_replica={"A100": 4.0, "L4": 1.0})
    load(scaler, 8, T0)
    assert scaler.evaluate([], T0).target == 2


def test_requests_older_than_the_window_are_forgotten():
    scaler = instant()
    load(scaler, 5, T0)
    assert scaler.qps(T0 + 30) == pytest.approx(2.5)
    assert scaler.qps(T0 + 61) == 0


def test_upscale_needs_15_agreeing_decisions_by_default():
    scaler = autoscaler_for(policy())
    targets = []
    for step in range(16):
        now = T0 + 20 * step
        load(scaler, 3, now, since=None if step == 0 else now - 20)
        targets.append(scaler.evaluate(ready(1), now).target)
    assert targets == [1] * 14 + [3, 3]


def test_evaluating_more_often_than_the_interval_does_not_count_extra():
    scaler = autoscaler_for(policy())
    load(scaler, 3, T0)
    for t in range(0, 280, 5):  # decisions fall at 0, 20, ..., 260: 14 of them
        assert scaler.evaluate(ready(1), T0 + t).target == 1
        load(scaler, 3, T0 + t + 5, since=T0 + t)
    assert scaler.evaluate(ready(1), T0 + 280).target == 3


def test_a_disagreeing_decision_restarts_the_upscale_count():
    scaler = autoscaler_for(policy())
    now = T0
    for _ in range(10):
        load(scaler, 3, now)
        scaler.evaluate(ready(1), now)
        now += 60  # each load() call fills a fresh window
    scaler.evaluate(ready(1), now)  # empty window: wants 1 = current, counter resets
    now += 60
    for _ in range(14):
        load(scaler, 3, now)
        assert scaler.evaluate(ready(1), now).target == 1
        now += 60
    load(scaler, 3, now)
    assert scaler.evaluate(ready(1), now).target == 3


def test_downscale_needs_60_agreeing_decisions_by_default():
    scaler = autoscaler_for(policy())
    load(scaler, 4, T0)
    scaler.update_version(2, policy(), T0)  # a new version takes its target at once
    assert scaler.target_num_replicas == 4
    targets = [scaler.evaluate(ready(4, 2), T0 + 60 + 20 * i).target for i in range(61)]
    assert targets == [4] * 59 + [1, 1]


def test_custom_delays_set_the_thresholds():
    scaler = autoscaler_for(policy(upscale_delay_seconds=40, downscale_delay_seconds=100))
    assert (scaler.upscale_threshold, scaler.downscale_threshold) == (2, 5)


def test_zero_target_decides_every_5s_and_scales_up_at_once():
    scaler = autoscaler_for(policy(min_replicas=0))
    assert scaler.evaluate([], T0).target == 0
    assert scaler.decision_interval == 5
    load(scaler, 2, T0 + 4)
    assert scaler.evaluate([], T0 + 4).target == 0  # not yet a new decision
    decision = scaler.evaluate([], T0 + 5)
    assert decision.target == 2 and len(decision.scale_up) == 2
    assert scaler.decision_interval == 20


def test_terminal_replicas_are_replaced():
    scaler = instant(min_replicas=3)
    replicas = [*ready(2), ReplicaView(3, R.FAILED_PROBING, 1), ReplicaView(4, R.PREEMPTED, 1)]
    assert len(scaler.evaluate(replicas, T0).scale_up) == 1


def test_scale_down_order_status_then_version_then_newest_id():
    replicas = [
        ReplicaView(1, R.READY, 1),
        ReplicaView(2, R.READY, 2),
        ReplicaView(3, R.STARTING, 2),
        ReplicaView(4, R.PENDING, 2),
        ReplicaView(5, R.NOT_READY, 2),
        ReplicaView(6, R.STARTING, 2),
        ReplicaView(7, R.SHUTTING_DOWN, 1),
    ]
    assert scale_down_victims(replicas, 10) == [4, 6, 3, 5, 1, 2]
    assert scale_down_victims(replicas, 2) == [4, 6]


def test_scale_down_decision_removes_the_excess():
    scaler = instant()
    live = [*ready(2), ReplicaView(3, R.STARTING, 1), ReplicaView(4, R.PROVISIONING, 1)]
    decision = scaler.evaluate(live, T0)
    assert decision.target == 1
    assert decision.scale_down == (4, 3, 2)


def fallback(**kw) -> FallbackRequestRateAutoscaler:
    scaler = instant(**kw)
    assert isinstance(scaler, FallbackRequestRateAutoscaler)
    return scaler


def ups(decision) -> tuple[int, int]:
    spot = sum(1 for u in decision.scale_up if u.use_spot)
    return spot, sum(1 for u in decision.scale_up if u.use_spot is False)


def test_base_ondemand_fallback_keeps_a_floor_of_ondemand():
    scaler = fallback(base_ondemand_fallback_replicas=1)
    load(scaler, 4, T0)
    assert ups(scaler.evaluate([], T0)) == (3, 1)


def test_dynamic_fallback_covers_spot_that_is_not_ready():
    scaler = fallback(base_ondemand_fallback_replicas=1, dynamic_ondemand_fallback=True)
    load(scaler, 4, T0)
    spot = [*ready(1, spot=True), ReplicaView(2, R.PROVISIONING, 1, True)]
    spot.append(ReplicaView(3, R.STARTING, 1, True))
    # spot wanted 3, ready 1: on-demand = base 1 + 2 = 3 (capped at the target, 4)
    assert ups(scaler.evaluate(spot, T0)) == (0, 3)


def test_dynamic_fallback_on_demand_is_capped_at_the_target_not_the_overprovision():
    scaler = fallback(dynamic_ondemand_fallback=True, num_overprovision=2)
    load(scaler, 2, T0)
    # target 2, final 4: spot wanted 4, none ready; on-demand min(0 + 4, 2) = 2
    assert ups(scaler.evaluate([], T0)) == (4, 2)


def test_fallback_retires_on_demand_once_spot_is_ready():
    scaler = fallback(dynamic_ondemand_fallback=True)
    load(scaler, 2, T0)
    replicas = [*ready(2, spot=True), *ready(2, first_id=10)]
    assert scaler.evaluate(replicas, T0).scale_down == (11, 10)


def test_a_version_that_never_became_ready_and_crashed_halts_scaling():
    scaler = instant(min_replicas=2)
    replicas = [ReplicaView(1, R.FAILED, 1), ReplicaView(2, R.STARTING, 1)]
    decision = scaler.evaluate(replicas, T0)
    assert decision.halted and "version 1" in decision.halted
    assert decision.scale_up == () and decision.scale_down == ()
    # once a replica of that version was ready, a crash is replaced as usual
    assert not scaler.evaluate([*ready(1, first_id=3), *replicas], T0 + 20).halted


def test_rolling_update_launches_new_before_retiring_old():
    scaler = instant(min_replicas=2)
    old = ready(2)
    scaler.update_version(2, policy(min_replicas=2, upscale_delay_seconds=0), T0)
    first = scaler.evaluate(old, T0)
    assert len(first.scale_up) == 2 and first.scale_down == ()
    one_new = [*old, ReplicaView(3, R.READY, 2), ReplicaView(4, R.STARTING, 2)]
    assert scaler.evaluate(one_new, T0 + 20).scale_down == (2,)
    both_new = [*old, *ready(2, version=2, first_id=3)]
    assert scaler.evaluate(both_new, T0 + 40).scale_down == (2, 1)


def test_update_version_must_move_forward():
    scaler = instant()
    with pytest.raises(ValueError, match="not newer"):
        scaler.update_version(1, policy(), T0)


def test_autoscaler_for_picks_like_skyserve():
    assert type(autoscaler_for(policy())) is RequestRateAutoscaler
    assert type(autoscaler_for(policy(base_ondemand_fallback_replicas=0))) is RequestRateAutoscaler
    assert isinstance(
        autoscaler_for(policy(dynamic_ondemand_fallback=True)), FallbackRequestRateAutoscaler
    )
    assert isinstance(
        autoscaler_for(policy(base_ondemand_fallback_replicas=1)), FallbackRequestRateAutoscaler
    )


_LIVE = [R.PENDING, R.PROVISIONING, R.STARTING, R.NOT_READY, R.READY, R.SHUTTING_DOWN, R.FAILED]


@given(
    old=st.lists(st.sampled_from(_LIVE), max_size=6),
    new=st.lists(st.sampled_from(_LIVE), max_size=6),
    target=st.integers(0, 6),
)
def test_rollout_never_drops_below_the_ready_count(old, new, target):
    replicas = [ReplicaView(i, s, 1) for i, s in enumerate(old)]
    replicas += [ReplicaView(100 + i, s, 2) for i, s in enumerate(new)]
    retired = set(outdated_to_retire(replicas, 2, target))
    assert all(
        r.version == 1 and not r.status.is_terminal for r in replicas if r.replica_id in retired
    )
    ready_before = sum(r.status is R.READY for r in replicas)
    ready_after = sum(r.status is R.READY for r in replicas if r.replica_id not in retired)
    assert ready_after >= min(target, ready_before)
    new_ready = sum(s is R.READY for s in new)
    if new_ready >= target:  # the new version carries the load: every old replica goes
        assert retired == {
            r.replica_id for r in replicas if r.version == 1 and not r.status.is_terminal
        }
