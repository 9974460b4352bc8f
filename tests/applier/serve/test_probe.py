"""Readiness probing: the state machine driven by an explicit clock, and real probes on loopback."""

from __future__ import annotations

import json

import pytest

from applier.serve.probe import (
    ProbeState,
    advance,
    failure_threshold,
    probe_due,
    probe_interval,
    probe_once,
)
from applier.serve.status import ReplicaStatus
from schema.task import ReadinessProbe

T0 = 1_000.0
DEFAULT = ReadinessProbe()


def run(results: list[tuple[float, bool]], probe: ReadinessProbe = DEFAULT) -> list[ReplicaStatus]:
    """Statuses after each (seconds since start, probe ok) step of a replica started at T0."""
    state = ProbeState.starting(T0)
    out = []
    for at, ok in results:
        state = advance(state, ok, T0 + at, probe)
        out.append(state.status)
    return out


def test_skypilot_defaults():
    assert DEFAULT.initial_delay_seconds == 1200
    assert DEFAULT.timeout_seconds == 15
    assert probe_interval(DEFAULT) == 10
    assert failure_threshold(DEFAULT) == 180


def test_ready_on_first_200():
    assert run([(5, False), (15, True)]) == [ReplicaStatus.STARTING, ReplicaStatus.READY]


def test_never_ready_fails_only_after_the_initial_delay():
    steps = [(600, False), (1200, False), (1201, False)]
    assert run(steps) == [
        ReplicaStatus.STARTING,
        ReplicaStatus.STARTING,
        ReplicaStatus.FAILED_INITIAL_DELAY,
    ]


def test_initial_delay_is_configurable():
    probe = ReadinessProbe(path="/health", initial_delay_seconds=30)
    assert run([(31, False)], probe) == [ReplicaStatus.FAILED_INITIAL_DELAY]


def test_a_ready_replica_is_not_held_to_the_initial_delay():
    # Ready once at 10 s, then failing at 2000 s: the initial delay no longer applies.
    assert run([(10, True), (2000, False)])[-1] is ReplicaStatus.NOT_READY


def test_once_ready_failures_spanning_the_threshold_fail_probing():
    steps = [(10, True), (100, False), (200, False), (279, False), (280, False)]
    assert run(steps) == [
        ReplicaStatus.READY,
        ReplicaStatus.NOT_READY,
        ReplicaStatus.NOT_READY,
        ReplicaStatus.NOT_READY,
        ReplicaStatus.FAILED_PROBING,
    ]


def test_a_success_resets_the_failure_span():
    steps = [(10, True), (20, False), (190, False), (195, True), (200, False), (370, False)]
    assert run(steps)[-3:] == [
        ReplicaStatus.READY,
        ReplicaStatus.NOT_READY,
        ReplicaStatus.NOT_READY,  # 170 s since the new first failure: still under 180
    ]


def test_custom_failure_threshold():
    probe = ReadinessProbe(consecutive_failure_threshold_timeout=10)
    assert run([(1, True), (2, False), (12, False)], probe)[-1] is ReplicaStatus.FAILED_PROBING


@pytest.mark.parametrize("verdict", [ReplicaStatus.FAILED_PROBING, ReplicaStatus.PREEMPTED])
def test_a_verdict_stands_against_later_successes(verdict):
    state = ProbeState(verdict, T0, first_ready_at=T0)
    assert advance(state, True, T0 + 5, DEFAULT) == state
    assert not probe_due(state, DEFAULT, T0 + 10_000)


def test_should_terminate_only_for_the_probers_own_failures():
    assert ProbeState(ReplicaStatus.FAILED_INITIAL_DELAY, T0).should_terminate
    assert ProbeState(ReplicaStatus.FAILED_PROBING, T0).should_terminate
    assert not ProbeState(ReplicaStatus.NOT_READY, T0).should_terminate


def test_probe_due_follows_the_interval():
    probe = ReadinessProbe(endpoint_probe_interval_seconds=5)
    state = ProbeState.starting(T0)
    assert probe_due(state, probe, T0)
    state = advance(state, False, T0, probe)
    assert not probe_due(state, probe, T0 + 4.9)
    assert probe_due(state, probe, T0 + 5)


def test_probe_get_is_ready_on_200(make_replica):
    replica = make_replica()
    result = probe_once(replica.url, ReadinessProbe(path="/health?deep=1"))
    assert result.ok and result.status_code == 200
    assert (replica.seen[-1].method, replica.seen[-1].path) == ("GET", "/health?deep=1")


@pytest.mark.parametrize("code", [204, 301, 404, 503])
def test_probe_any_other_status_is_not_ready(make_replica, code):
    result = probe_once(make_replica().url, ReadinessProbe(path=f"/status/{code}"))
    assert not result.ok and result.status_code == code


def test_probe_posts_json_with_headers(make_replica):
    replica = make_replica()
    probe = ReadinessProbe(
        path="/v1/chat/completions",
        post_data={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer k"},
    )
    assert probe_once(replica.url, probe).ok
    seen = replica.seen[-1]
    headers = {k.lower(): v for k, v in seen.headers}
    assert seen.method == "POST"
    assert json.loads(seen.body) == probe.post_data
    assert headers["authorization"] == "Bearer k"
    assert headers["content-type"] == "application/json"


def test_probe_unreachable_replica_is_not_ready_with_a_reason(make_replica):
    replica = make_replica()
    replica.stop()
    result = probe_once(replica.url, DEFAULT)
    assert not result.ok and result.status_code is None
    assert result.error and "Connection" in result.error


def test_probe_refuses_a_non_http_url():
    result = probe_once("127.0.0.1:80", DEFAULT)
    assert not result.ok and "http" in (result.error or "")
