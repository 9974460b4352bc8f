"""One sync: fetch the branch, pin a commit, validate it, plan against what really runs and,
when the repo allows, apply. Runs only on the daemon's sync worker thread (it owns the Store).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from applier import autostop
from applier.actions import Env
from applier.controllers import common as controllers
from applier.execute import ApplyResult, Executor
from applier.provider import Provider
from applier.refresh import OBSERVE_TIMEOUT_S, call_each, recover_journal, refresh
from planner.catalog import Catalog, load_shipped_catalog
from planner.plan import Action, Plan
from planner.render_text import render_text, summary_line
from reconciler.context import build_plan, load_desired, provider_settings
from reconciler.context import providers as repo_providers
from reconciler.daemon import logs
from reconciler.daemon.leader import Leadership
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.status import Status, SyncReport, resource_rows
from reconciler.source import GitSource, SourceError, UntrustedCommitError
from schema.errors import SkyformError, SpecError
from schema.repo import DesiredState
from state import Store

ProvidersFor = Callable[[DesiredState], Mapping[str, Provider]]
DONE = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED", "MISSING"})


@dataclass
class Settings:
    repo: str
    home: Path
    branch: str = "main"
    state_url: str | None = None
    webhook_secret: str | None = None
    lease_s: float = 30.0
    trusted_keys: tuple[Path, ...] = ()
    parallelism: int = 10
    providers_for: ProvidersFor | None = None  # tests and the bench inject a fake provider
    listen: tuple[str, int] | None = None
    # Each provider is observed on its own thread; one that does not answer in time is left
    # at its recorded status for this sync, so a slow provider never stalls the others.
    observe_timeout_s: float = OBSERVE_TIMEOUT_S


@dataclass
class Pinned:
    """A commit that loaded: its tree and what it declares."""

    commit: str
    root: Path
    desired: DesiredState


class Syncer:
    def __init__(
        self,
        settings: Settings,
        source: GitSource,
        open_store: Callable[[], Store],
        leadership: Leadership,
        metrics: Metrics,
        status: Status,
    ) -> None:
        self.settings = settings
        self.source = source
        self.open_store = open_store
        self.leadership = leadership
        self.metrics = metrics
        self.status = status
        self.head: str | None = None
        self.attempted: str | None = None  # the newest head we tried, valid or not
        self.good: Pinned | None = None  # the newest commit that validated
        self._store: Store | None = None
        self._provs: tuple[str, Mapping[str, Provider]] | None = None
        self._catalog: Catalog | None = None
        self._drift_seen: set[tuple[str, str]] = set()  # (address, reason) already counted
        self.on_config: Callable[[DesiredState], None] = lambda desired: None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def warm(self) -> None:
        """Load what every plan needs before leading, so a standby takes over hot."""
        if self._catalog is None:
            self._catalog = load_shipped_catalog()

    def store(self) -> Store:
        if self._store is None:
            self._store = self.open_store()
        return self._store

    def sync(self, trigger: str, full: bool) -> SyncReport:
        """`full` (drift timer, new leader): plan even when the head has not moved."""
        report = SyncReport(trigger=trigger, started_at=time.time())
        plan_text: str | None = None
        try:
            with logs.context(trigger=trigger):
                plan_text = self._sync(report, full)
        except SkyformError as exc:
            report.outcome, report.message = "error", str(exc)
            logs.error(f"sync failed: {exc}", commit=report.commit, plan_id=report.plan_id)
            self.close()  # a broken connection is reopened by the next sync
        except Exception as exc:  # git or driver errors nobody translated: report, go on
            report.outcome, report.message = "error", f"{type(exc).__name__}: {exc}"
            logs.logger().exception(f"sync crashed: {exc}")
            self.close()
        report.finished_at = time.time()
        self.metrics.syncs.labels(trigger=trigger, outcome=report.outcome).inc()
        if report.outcome == "up-to-date":
            return report  # a poll that found nothing new is not a sync worth showing
        self.metrics.reconcile_seconds.labels(trigger=trigger).observe(
            report.finished_at - report.started_at
        )
        if report.ok and report.commit:
            self.metrics.succeeded(report.commit, report.finished_at)
        self.status.finish(report, plan_text)
        return report

    def _sync(self, report: SyncReport, full: bool) -> str | None:
        self._fetch(report)
        pinned = self._pin(report)
        if pinned is None or (report.outcome == "up-to-date" and not full):
            return None
        report.commit = pinned.commit
        report.plan_id = uuid.uuid4().hex[:12]
        with logs.context(commit=pinned.commit, plan_id=report.plan_id):
            return self._converge(report, pinned)

    def _fetch(self, report: SyncReport) -> None:
        now = time.monotonic()
        if not self.source.backoff.ready(now):
            return  # still backing off: keep serving the last good commit
        try:
            self.head = self.source.fetch()
        except SourceError as exc:
            delay = self.source.backoff.failed(now)
            self.metrics.source_errors.inc()
            self.status.update(source_error=str(exc))
            report.message = str(exc)
            logs.warning(f"{exc}; retrying in {delay:.0f}s, serving the last good commit")
            return
        self.source.backoff.succeeded()
        self.status.update(source_error=None, head_commit=self.head)

    def _pin(self, report: SyncReport) -> Pinned | None:
        """The commit to reconcile: a new head if it validates, else the last good one."""
        head = self.head
        if head is None or head == self.attempted:
            if self.good is None:
                report.outcome = "source-error" if report.message else "error"
                report.message = report.message or "no commit has been fetched yet"
                return None
            report.outcome = "up-to-date"
            return self.good
        # Only a verdict on the commit marks it attempted; anything else (disk, git) retries.
        try:
            self.source.verify(head)
            root = self.source.checkout(head)
            desired = load_desired(root, {})
        except UntrustedCommitError as exc:
            self._refuse(report, head, "untrusted-commit", str(exc))
            return None
        except SpecError as exc:
            self._refuse(report, head, "invalid-commit", _spec_text(exc))
            return None
        self.attempted = head
        self.good = Pinned(head, root, desired)
        self.metrics.commit_invalid.set(0)
        self.status.update(invalid_commit=None, last_good_commit=head)
        self.on_config(desired)
        logs.info("new commit validated", commit=head, resources=len(desired.resources))
        return self.good

    def _refuse(self, report: SyncReport, commit: str, outcome: str, why: str) -> None:
        # Nothing is planned from a commit that fails: a file that does not load must never
        # read as "resource removed". The last good commit stays in force for drift.
        self.attempted = commit
        self.metrics.invalid_commits.inc()
        self.metrics.commit_invalid.set(1)
        self.status.update(invalid_commit={"commit": commit, "error": why})
        report.commit, report.outcome, report.message = commit, outcome, why
        logs.error(f"commit refused, nothing applied: {why}", commit=commit)

    def _converge(self, report: SyncReport, pinned: Pinned) -> str:
        config = pinned.desired.config.reconcile
        desired = _drift_policy(pinned.desired, config.self_heal)
        store = self.store()
        self.leadership.confirm(store)
        provs = self._providers(desired)
        for note in recover_journal(store, self.settings.home, provs):
            logs.info(f"journal: {note}")
        self._autostop(provs)
        self.warm()  # the catalog is read once: it changes only with Skyform itself
        plan = build_plan(
            desired,
            store,
            commit=pinned.commit,
            provs=provs,
            catalog=self._catalog,
            observe_timeout_s=self.settings.observe_timeout_s,
        )
        text = render_text(plan)
        report.summary = summary_line(plan)
        report.changes = _changes(plan)
        report.drift = [{"address": c.address, "drift": c.drift} for c in plan.changes if c.drift]
        # A drift is counted once: an alert-only drift seen again each interval is the same
        # drift, not a new one; it counts again once it was healed or its reason changed.
        drifted = {(d["address"], str(d["drift"])) for d in report.drift}
        self.metrics.drift_found.inc(len(drifted - self._drift_seen))
        self._drift_seen = drifted
        if plan.errors:
            report.outcome = "plan-error"
            report.message = "; ".join(f.message for f in plan.errors)
            logs.error(f"plan refused: {report.message}")
        elif not plan.summary.changes:
            report.outcome = "in-sync"
            logs.info(f"in sync: {report.summary}", drifted=len(report.drift))
        elif not config.auto_apply:
            report.outcome = "planned"
            logs.info(f"auto_apply is off; plan kept for review: {report.summary}")
        else:
            self._apply(report, plan, pinned, desired, provs)
        self._observe(store, provs)
        return text

    def _autostop(self, provs: Mapping[str, Provider]) -> None:
        """Idle clusters stop (or go down) before planning, so the plan sees them as stopped:
        an autostop is a lifecycle event, never drift to heal. Providers are asked at once; one
        that is slow or unreachable is skipped this time."""
        now = time.time()
        done = call_each(
            provs,
            lambda name, p: autostop.enforce({name: p}, now),
            self.settings.observe_timeout_s,
        )
        for name in sorted(set(provs) - set(done)):
            logs.warning(f"provider {name} is slow or unreachable; autostop skips it this time")
        for stopped in (s for name in sorted(done) for s in done[name]):
            verb = "torn down" if stopped.down else "stopped"
            logs.info(
                f"autostop: {verb} after {stopped.idle_minutes} idle minutes",
                address=stopped.address,
            )

    def _apply(
        self,
        report: SyncReport,
        plan: Plan,
        pinned: Pinned,
        desired: DesiredState,
        provs: Mapping[str, Provider],
    ) -> None:
        store = self.store()
        self.leadership.confirm(store)  # fencing: never act on a lease that lapsed
        logs.info(f"applying: {report.summary}")
        env = Env(
            home=self.settings.home,
            base_dir=pinned.root,
            providers=provs,
            env_overrides=_declared_env(desired),
            provider_settings=provider_settings(desired),
        )
        run = store.begin_run("reconcile", _who(), pinned.commit, report.plan_id)
        result = Executor(
            plan,
            desired,
            store,
            env,
            plan_id=report.plan_id or uuid.uuid4().hex,
            parallelism=self.settings.parallelism,
            notify=_notifier(pinned.commit, report.plan_id, self.leadership.check),
        ).run()
        store.finish_run(run.id, "ok" if result.ok else "failed", _failures(result)[:2000])
        self._count(plan, result)
        report.outcome = "applied" if result.ok else "apply-failed"
        report.message = _failures(result)
        if result.ok:
            self.status.update(last_applied_commit=pinned.commit)
        logs.info(f"apply {'complete' if result.ok else 'incomplete'}", done=len(result.done))

    def _count(self, plan: Plan, result: ApplyResult) -> None:
        drifted = {c.address for c in plan.changes if c.drift and c.action != Action.NOOP}
        healed = drifted & set(result.done)
        self.metrics.drift_healed.inc(len(healed))
        self._drift_seen = {d for d in self._drift_seen if d[0] not in healed}
        self.metrics.apply_errors.inc(len(result.failed))
        self.metrics.failovers.inc(sum(1 for a in result.attempts.values() if len(a) > 1))

    def _observe(self, store: Store, provs: Mapping[str, Provider]) -> None:
        records = store.list_resources()
        rows = resource_rows(records, refresh(records, provs, self.settings.observe_timeout_s))
        cost = sum(r["cost_per_hour"] for r in rows if r["status"] not in DONE)
        self.metrics.set_resources([(r["kind"], r["status"]) for r in rows], cost)
        self.status.update(resources=rows, cost_per_hour=round(cost, 6))

    def _providers(self, desired: DesiredState) -> Mapping[str, Provider]:
        if self.settings.providers_for is not None:
            return self.settings.providers_for(desired)
        key = json.dumps(provider_settings(desired), sort_keys=True, default=str)
        # Providers hold clients and caches; rebuild them only when the search space changes.
        if self._provs is None or self._provs[0] != key:
            self._provs = (key, repo_providers(desired))
        return self._provs[1]


def _drift_policy(desired: DesiredState, self_heal: bool) -> DesiredState:
    """With self_heal off, drift the repo would correct is only reported (policy alert)."""
    policy = desired.config.policy
    if self_heal or policy.drift != "correct":
        return desired
    config = desired.config.model_copy(
        update={"policy": policy.model_copy(update={"drift": "alert"})}
    )
    return dataclasses.replace(desired, config=config)


def _changes(plan: Plan) -> list[dict[str, Any]]:
    return [
        {"address": c.address, "action": c.action.value, "reasons": list(c.reasons)}
        for c in plan.changes
        if c.action != Action.NOOP or c.drift
    ]


def _declared_env(desired: DesiredState) -> dict[str, str]:
    """Values of declared envs from the daemon's environment, so controllers see them too."""
    declared = {n for r in desired.resources.values() for t in r.source.tasks for n in t.task.envs}
    return {n: os.environ[n] for n in declared if n in os.environ}


def _failures(result: ApplyResult) -> str:
    skipped = [f"{a}: skipped ({why})" for a, why in sorted(result.skipped.items())]
    return "; ".join([*result.failed.values(), *skipped])


def _spec_text(exc: SpecError) -> str:
    return "; ".join(d.format() for d in exc.diagnostics) or str(exc)


def _notifier(
    commit: str, plan_id: str | None, check: Callable[[], None]
) -> Callable[[str, str], None]:
    # Workers of the executor do not inherit the log context: name commit and plan here.
    def notify(address: str, message: str) -> None:
        check()
        logs.info(message, address=address, commit=commit, plan_id=plan_id)

    return notify


def _who() -> str:
    return f"skyform-reconcile@{socket.gethostname()}:{os.getpid()}"


def controller_trees(home: Path) -> set[str]:
    """Commit trees that running job/service controllers still read (never pruned)."""
    return {spec.base_dir for _, spec in controllers.list_controllers(home)}
