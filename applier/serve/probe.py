"""Readiness probing: the replica state machine (pure, clock passed in) and one probe over HTTP.

A replica is ready iff its probe answers HTTP 200, as in SkyServe's replica manager.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from applier.serve.status import ReplicaStatus
from schema.task import ReadinessProbe

DEFAULT_PROBE_INTERVAL_SECONDS = 10
DEFAULT_FAILURE_THRESHOLD_SECONDS = 180
_MAX_BODY_READ = 64 * 1024


def probe_interval(probe: ReadinessProbe) -> float:
    """Seconds between two probes of one replica (`endpoint_probe_interval_seconds`)."""
    if probe.endpoint_probe_interval_seconds is None:
        return DEFAULT_PROBE_INTERVAL_SECONDS
    return probe.endpoint_probe_interval_seconds


def failure_threshold(probe: ReadinessProbe) -> float:
    """How long a once-ready replica may keep failing before it is FAILED_PROBING."""
    if probe.consecutive_failure_threshold_timeout is None:
        return DEFAULT_FAILURE_THRESHOLD_SECONDS
    return probe.consecutive_failure_threshold_timeout


@dataclass(frozen=True)
class ProbeState:
    """What the prober knows about one replica; `started_at` is when its process came up."""

    status: ReplicaStatus
    started_at: float
    first_ready_at: float | None = None
    failing_since: float | None = None
    last_probe_at: float | None = None

    @classmethod
    def starting(cls, now: float) -> ProbeState:
        return cls(status=ReplicaStatus.STARTING, started_at=now)

    @property
    def ready(self) -> bool:
        return self.status is ReplicaStatus.READY

    @property
    def should_terminate(self) -> bool:
        """The prober gave up on it: the owner tears it down and the autoscaler replaces it."""
        return self.status in (ReplicaStatus.FAILED_INITIAL_DELAY, ReplicaStatus.FAILED_PROBING)


def probe_due(state: ProbeState, probe: ReadinessProbe, now: float) -> bool:
    if state.status.is_terminal:
        return False
    return state.last_probe_at is None or now - state.last_probe_at >= probe_interval(probe)


def advance(state: ProbeState, ok: bool, now: float, probe: ReadinessProbe) -> ProbeState:
    """The state after one probe that answered 200 (`ok`) or not, at time `now`."""
    if state.status.is_terminal:
        # A verdict stands until the owner replaces the replica; a late 200 does not revive it.
        return state
    if ok:
        first = state.first_ready_at if state.first_ready_at is not None else now
        return ProbeState(ReplicaStatus.READY, state.started_at, first, None, now)
    if state.first_ready_at is None:
        late = now - state.started_at > probe.initial_delay_seconds
        status = ReplicaStatus.FAILED_INITIAL_DELAY if late else ReplicaStatus.STARTING
        return dataclasses.replace(state, status=status, last_probe_at=now)
    since = state.failing_since if state.failing_since is not None else now
    given_up = now - since >= failure_threshold(probe)
    status = ReplicaStatus.FAILED_PROBING if given_up else ReplicaStatus.NOT_READY
    return dataclasses.replace(state, status=status, failing_since=since, last_probe_at=now)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None


def probe_once(replica_url: str, probe: ReadinessProbe) -> ProbeResult:
    """One readiness probe: POST with `post_data` as JSON when set, GET otherwise."""
    parts = urlsplit(replica_url)
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        return ProbeResult(False, error=f"replica URL {replica_url!r} is not http(s)://HOST:PORT")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    base = parts.path.rstrip("/")
    headers = {"Connection": "close", **(probe.headers or {})}
    body: bytes | None = None
    method = "GET"
    if probe.post_data is not None:
        method = "POST"
        text = probe.post_data if isinstance(probe.post_data, str) else json.dumps(probe.post_data)
        body = text.encode()
        headers.setdefault("Content-Type", "application/json")
    conn = cls(parts.hostname, parts.port, timeout=probe.timeout_seconds)
    try:
        conn.request(method, base + probe.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(_MAX_BODY_READ)
        return ProbeResult(response.status == 200, status_code=response.status)
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
