"""The daemon's Prometheus metrics, in a registry of its own (daemons may share a process)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Argo CD's reconcile buckets stop at 16 s; applies that launch compute take minutes.
BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "skyform_reconcile_duration_seconds",
            "Time of one sync (fetch, plan, apply), by what triggered it",
            ["trigger"],
            buckets=BUCKETS,
            registry=r,
        )
        self.syncs = Counter(
            "skyform_syncs", "Syncs by trigger and outcome", ["trigger", "outcome"], registry=r
        )
        self.resources = Gauge(
            "skyform_resources",
            "Managed resources by kind and status",
            ["kind", "status"],
            registry=r,
        )
        self.drift_found = Counter(
            "skyform_drift_found",
            "Drifts found (an address and reason counts once until healed or changed)",
            registry=r,
        )
        self.drift_healed = Counter("skyform_drift_healed", "Drifted resources healed", registry=r)
        self.apply_errors = Counter(
            "skyform_apply_errors", "Resources that failed to apply", registry=r
        )
        self.failovers = Counter(
            "skyform_placement_failovers", "Resources placed after failing over", registry=r
        )
        self.leader_changes = Counter(
            "skyform_leader_acquired", "Times this replica became the leader", registry=r
        )
        self.leader = Gauge("skyform_leader", "1 while this replica leads", registry=r)
        self.cost = Gauge("skyform_cost_per_hour_dollars", "Current $/h of what runs", registry=r)
        self.last_success = Gauge(
            "skyform_last_successful_sync_timestamp_seconds",
            "When a sync last succeeded",
            registry=r,
        )
        self.last_commit = Gauge(
            "skyform_last_successful_sync_commit_info",
            "The commit of the last successful sync (value 1)",
            ["commit"],
            registry=r,
        )
        self.invalid_commits = Counter(
            "skyform_invalid_commit_errors", "Commits that failed validation", registry=r
        )
        self.commit_invalid = Gauge(
            "skyform_head_commit_invalid", "1 while the branch head fails validation", registry=r
        )
        self.controller_restarts = Counter(
            "skyform_controller_restarts",
            "Job and service controllers started again after their process died",
            ["address"],
            registry=r,
        )
        self.source_errors = Counter(
            "skyform_source_errors", "Failed fetches of the git remote", registry=r
        )
        self._commit: str | None = None

    def set_resources(self, rows: list[tuple[str, str]], cost: float) -> None:
        self.resources.clear()
        for (kind, status), n in Tally(rows).items():
            self.resources.labels(kind=kind, status=status).set(n)
        self.cost.set(cost)

    def succeeded(self, commit: str, when: float) -> None:
        if self._commit != commit:
            # One series per daemon, not one per commit ever seen.
            self.last_commit.clear()
            self._commit = commit
        self.last_commit.labels(commit=commit).set(1)
        self.last_success.set(when)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
