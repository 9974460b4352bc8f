"""What the daemon knows about itself, shared between the sync worker (writer) and the HTTP
threads (readers): role, source, the last sync and plan, and the resources as last seen."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from applier.refresh import Live
from state import Resource


@dataclass
class SyncReport:
    trigger: str
    started_at: float
    commit: str | None = None
    plan_id: str | None = None
    # in-sync | applied | apply-failed | planned | invalid-commit | untrusted-commit |
    # plan-error | source-error | up-to-date | not-leader | error
    outcome: str = "running"
    message: str = ""
    finished_at: float | None = None
    summary: str = ""
    changes: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in ("in-sync", "applied", "planned", "up-to-date")


def resource_rows(records: list[Resource], live: Mapping[str, Live]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(records, key=lambda r: r.address):
        seen = live.get(r.address)
        p = r.placement or {}
        infra = "/".join(str(x) for x in (p.get("cloud"), p.get("region"), p.get("zone")) if x)
        rows.append(
            {
                "address": r.address,
                "kind": r.kind,
                "status": seen.status if seen else r.status,
                "drift": seen.drift if seen else None,
                "placement": " ".join(x for x in (infra, str(p.get("instance_type") or "")) if x),
                "num_nodes": p.get("num_nodes"),
                "cost_per_hour": float(p.get("hourly_cost") or 0.0),
                "endpoint": (seen.endpoint if seen else None) or (r.handles or {}).get("endpoint"),
            }
        )
    return rows


class Status:
    """Thread-safe: every read is a deep copy taken under the lock."""

    def __init__(self, repo: str, branch: str) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "repo": repo,
            "branch": branch,
            "role": "starting",
            "leader": None,
            "head_commit": None,
            "last_good_commit": None,
            "last_applied_commit": None,
            "last_successful_sync_at": None,
            "source_error": None,
            "invalid_commit": None,
            "last_sync": None,
            "last_plan": None,
            "resources": [],
            "cost_per_hour": 0.0,
            "started_at": time.time(),
        }

    def update(self, **values: Any) -> None:
        with self._lock:
            self._data.update(copy.deepcopy(values))

    def finish(self, report: SyncReport, plan_text: str | None) -> None:
        with self._lock:
            self._data["last_sync"] = asdict(report)
            if plan_text is not None:
                self._data["last_plan"] = {
                    "commit": report.commit,
                    "plan_id": report.plan_id,
                    "summary": report.summary,
                    "text": plan_text,
                    "at": report.finished_at,
                }
            if report.ok and report.commit:
                self._data["last_successful_sync_at"] = report.finished_at

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._data)

    def get(self, key: str) -> Any:
        with self._lock:
            return copy.deepcopy(self._data.get(key))
