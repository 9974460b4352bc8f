"""Executing a plan: dependency order, bounded parallelism, a journal entry before every
provider call, the state saved after every completed action, and failover recorded.

Provider work runs in worker threads; the store is written only from the calling thread (a
Store belongs to one thread), so a crash leaves either the journal entry alone (resumed by
`applier.recover`) or the journal entry and the resource record, never a half-written record.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from applier import actions
from applier.actions import Attempt, Env, ExhaustedError, Outcome
from planner.plan import Action, Change, PlacementView, Plan
from schema.errors import ProviderError, SkyformError
from schema.repo import DesiredState
from state import PlacementKey, Resource, Store

Notify = Callable[[str, str], None]


class StalePlanError(SkyformError):
    """A saved plan no longer matches the state (or the repo) it was made against."""


@dataclass
class ApplyResult:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def check_fresh(plan: Plan, store: Store, commit: str | None) -> None:
    meta = store.meta()
    problems = []
    if plan.lineage and meta.lineage != plan.lineage:
        problems.append(f"state lineage is {meta.lineage}, the plan was made for {plan.lineage}")
    if meta.serial != plan.serial:
        problems.append(f"state serial is {meta.serial}, the plan was made at serial {plan.serial}")
    if plan.repo_commit and commit and plan.repo_commit != commit:
        problems.append(f"repo is at {commit[:12]}, the plan was made at {plan.repo_commit[:12]}")
    if problems:
        raise StalePlanError(
            "saved plan is stale: " + "; ".join(problems) + ". Run `skyform plan` again."
        )


def _placement_key(view: PlacementView) -> PlacementKey:
    accs = ",".join(f"{k}:{v:g}" for k, v in (view.accelerators or {}).items()) or None
    return PlacementKey(
        infra=view.cloud,
        region=view.region,
        zone=view.zone,
        instance_type=view.instance_type,
        use_spot=view.use_spot,
        accelerators=accs,
    )


@dataclass
class _Job:
    change: Change
    skyform_id: str
    intent_key: str


class Executor:
    """Runs one plan. Build it with the store, the desired state and the world (`Env`)."""

    def __init__(
        self,
        plan: Plan,
        desired: DesiredState,
        store: Store,
        env: Env,
        *,
        plan_id: str,
        parallelism: int = 10,
        block_ttl: float = 900.0,
        notify: Notify | None = None,
    ) -> None:
        self.plan = plan
        self.desired = desired
        self.store = store
        self.env = env
        self.plan_id = plan_id
        self.parallelism = max(1, parallelism)
        self.block_ttl = block_ttl
        self.notify: Notify = notify or (lambda address, message: None)
        self.result = ApplyResult()
        self.snapshot: dict[str, Resource] = {}

    def run(self) -> ApplyResult:
        # Workers must not use the store (a Store belongs to one thread): they read this
        # snapshot of the records, taken before any of them starts.
        self.snapshot = {r.address: r for r in self.store.list_resources()}
        changes = {c.address: c for c in self.plan.changes if c.action != Action.NOOP}
        pending = [a for a in self.plan.order if a in changes]
        running: dict[cf.Future[Outcome | None], _Job] = {}
        with cf.ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            while pending or running:
                for address in list(pending):
                    if len(running) >= self.parallelism:
                        break
                    blocker = self._blocked_by(changes[address], changes)
                    if blocker == "wait":
                        continue
                    pending.remove(address)
                    if blocker:
                        self.result.skipped[address] = blocker
                        self.notify(address, f"skipped: {blocker}")
                        continue
                    job = self._begin(changes[address])
                    running[pool.submit(self._work, job)] = job
                if not running:
                    continue
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    self._finish(running.pop(future), future)
        return self.result

    def _blocked_by(self, change: Change, changes: dict[str, Change]) -> str | None:
        """None: may start; "wait": a dependency is still running; else why it is skipped."""
        deps = change.depends_on if change.action != Action.DELETE else ()
        for dep in deps:
            if dep in self.result.failed or dep in self.result.skipped:
                return f"dependency {dep} did not apply"
            if dep in changes and dep not in self.result.done:
                return "wait"
        if change.action == Action.DELETE:
            # Delete dependents first: anything still declared that depends on us goes first.
            for other in changes.values():
                waits = other.action == Action.DELETE and other.address not in self.result.done
                if waits and change.address in other.depends_on:
                    return "wait"
        return None

    def _begin(self, change: Change) -> _Job:
        record = self.store.get_resource(change.address)
        keep_id = change.action == Action.UPDATE or (
            change.action == Action.REPLACE and change.kind == "service"
        )
        old_id = (record.handles or {}).get("skyform_id") if record else None
        skyform_id = old_id if keep_id and old_id else actions.new_id()
        key = f"{self.plan_id}:{change.address}:{change.action.value}"
        payload: dict[str, Any] = {
            "skyform_id": skyform_id,
            "kind": change.kind,
            "action": change.action.value,
            "spec": change.after,
            "spec_hash": change.spec_hash,
            "depends_on": list(change.depends_on),
            # Recovery matches the adopted resource's place against these for its price.
            "candidates": [asdict(v) for v in actions.candidates(change)],
        }
        self.store.record_intent(key, change.address, change.action.value, payload, self.plan_id)
        self.notify(change.address, f"{change.action.value} started")
        return _Job(change, skyform_id, key)

    def _work(self, job: _Job) -> Outcome | None:
        c = job.change
        record = self.snapshot.get(c.address)
        old = record.handles if record else {}
        desired = self.desired.resources.get(c.address)
        if c.action == Action.DELETE:
            self._teardown(c.kind, old)
            return None
        assert desired is not None
        if c.kind == "cluster":
            if c.action == Action.UPDATE:
                return actions.update_cluster(
                    c, desired, self.env, job.skyform_id, old, self.notify
                )
            if c.action == Action.REPLACE or (c.action == Action.CREATE and old):
                self._teardown(c.kind, old)
            return actions.launch_cluster(c, desired, self.env, job.skyform_id, self.notify)
        if c.kind == "job":
            if c.action == Action.UPDATE:
                return Outcome(record.status if record else "PENDING", c.placement, dict(old))
            if old:
                self._teardown(c.kind, old)
            return actions.start_controller(c, desired, self.env, job.skyform_id)
        version = int(old.get("version", 0)) + (1 if c.action != Action.UPDATE else 0)
        endpoint = str(old.get("endpoint", ""))
        port = int(endpoint.rsplit(":", 1)[1]) if endpoint else actions.free_port()
        return actions.start_controller(
            c, desired, self.env, job.skyform_id, version=max(version, 1), lb_port=port
        )

    def _teardown(self, kind: str, handles: dict[str, Any]) -> None:
        if kind == "cluster":
            actions.terminate_cluster(handles, self.env.providers)
        else:
            actions.stop_controller(handles)

    def _finish(self, job: _Job, future: cf.Future[Outcome | None]) -> None:
        c = job.change
        try:
            outcome = future.result()
        except ExhaustedError as exc:
            self.result.attempts[c.address] = exc.attempts
            self._block(c.address, exc.blocked)
            self._fail(job, str(exc))
            return
        except (ProviderError, SkyformError, OSError) as exc:
            self._fail(job, f"{c.address}: {exc}")
            return
        if outcome is None:
            self.store.delete_resource(c.address)
        else:
            self.result.attempts[c.address] = outcome.attempts
            self._block(c.address, outcome.blocked)
            spec = dict(c.after or {})
            if c.depends_on:
                spec["skyform.depends_on"] = list(c.depends_on)
            self.store.put_resource(
                Resource(
                    address=c.address,
                    kind=c.kind,
                    spec_hash=c.spec_hash or "",
                    spec=spec,
                    placement=asdict(outcome.placement) if outcome.placement else None,
                    handles=outcome.handles,
                    status=outcome.status,
                )
            )
        self.store.complete_intent(job.intent_key, {"status": "done"})
        self.store.add_event(c.address, c.action.value, "applied")
        self.result.done.append(c.address)
        self.notify(c.address, f"{c.action.value} complete")

    def _block(self, address: str, views: list[PlacementView]) -> None:
        for view in views:
            self.store.block_placement(
                _placement_key(view), f"no capacity for {address}", self.block_ttl
            )

    def _fail(self, job: _Job, message: str) -> None:
        self.store.fail_intent(job.intent_key, message)
        self.store.add_event(job.change.address, "error", message)
        self.result.failed[job.change.address] = message
        self.notify(job.change.address, f"failed: {message}")
