"""`JobRunner`: the managed-job controller's logic, one bounded `step()` at a time, over
injected providers, clock and sleep (semantics and status.json: `applier.controllers.job`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from applier.controllers import job_record as jr
from applier.controllers.common import (
    ControllerSpec,
    cancel_requested,
    read_status,
    write_status,
)
from applier.controllers.job_record import JobRecord, exit_codes, live_logs, where
from applier.provider import (
    Handle,
    JobState,
    LaunchRequest,
    Placement,
    Provider,
    ResourceKind,
    Selector,
)
from schema.errors import CapacityError, ProviderError, SkyformError, TransientError
from schema.task import Task

RETRY_GAP_SECONDS = 60.0  # SkyPilot's RETRY_INIT_GAP_SECONDS between recovery passes
LAUNCH_PASSES = 3  # SkyPilot's `_launch(max_retry=3)` for a job's first launch
LAUNCH_BACKOFF = 1.6  # SkyPilot's Backoff multiplier between those passes
TRANSIENT_TRIES = 3  # launches of one candidate on TransientError before moving on
BACKOFF_MAX_SECONDS = 30.0


class _Fatal(Exception):
    """A launch error no retry or failover fixes (ProviderError)."""


class JobRunner:
    """One managed job's controller logic; `step()` does one bounded unit of work."""

    def __init__(
        self,
        spec: ControllerSpec,
        providers: Mapping[str, Provider],
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        cancelled: Callable[[], bool] | None = None,
        status_sink: Callable[[Mapping[str, Any]], None] | None = None,
        retry_gap: float = RETRY_GAP_SECONDS,
    ) -> None:
        self.spec = spec
        self.providers = providers  # by cloud name, as `common.providers_for` builds them
        self.directory = directory
        self.clock = clock
        self.sleep = sleep
        self.cancelled = cancelled or (lambda: cancel_requested(directory))
        self.status_sink = status_sink
        self.retry_gap = retry_gap
        self.record = JobRecord.from_json(read_status(directory))
        self.record.address = spec.address
        self._stages: list[Task] | None = None
        self._adopted = False

    # ---- loop -----------------------------------------------------------------------------

    def run(self, max_steps: int | None = None) -> str:
        """Step until the job ends (or `max_steps`); returns the status."""
        steps = 0
        while True:
            delay = self.step()
            steps += 1
            if delay is None or (max_steps is not None and steps >= max_steps):
                return self.record.status
            if delay > 0:
                self.sleep(delay)

    def step(self) -> float | None:
        """One unit of work; returns the seconds to wait before the next, None once terminal."""
        if self._stages is None and not self._load():
            return None
        if not self._adopted:
            self._adopt()
            self._adopted = True
        if self.record.terminal:
            return None
        if self.cancelled():
            self._cancel()
            return None
        if self.record.handle is None:
            return self._launch_step()
        return self._poll_step()

    def _load(self) -> bool:
        rec = self.record
        try:
            taskfile = self.spec.tasks()
        except SkyformError as exc:
            self._finish(jr.FAILED, f"the task file does not load: {exc}")
            return False
        if taskfile.header is not None and taskfile.header.execution == "parallel":
            self._finish(jr.FAILED, "job groups (execution: parallel) are not supported yet")
            return False
        self._stages = [t.task for t in taskfile.tasks]
        rec.stages = len(self._stages)
        rec.stage_names = [t.name for t in self._stages]
        if rec.started_at is None:
            rec.started_at = self.clock()
            self._save()
        return True

    # ---- launching ------------------------------------------------------------------------

    def _launch_step(self) -> float | None:
        rec = self.record
        reason = rec.launch_reason
        previous = Placement(**rec.previous_placement) if rec.previous_placement else None
        recovery = jr.recovery_of(self._task())
        order = jr.recovery_order(self.spec.placements(), previous, recovery.strategy)
        if rec.status == jr.PENDING:
            self._set(jr.STARTING, f"launching stage {rec.stage + 1}/{rec.stages}")
        try:
            found = self._launch_pass(order, reason)
        except _Fatal as exc:
            self._finish(jr.FAILED, str(exc))
            return None
        if self.cancelled():
            self._cancel()
            return None
        if found is not None:
            handle, provider = found
            rec.handle = handle.as_dict()
            rec.placement = asdict(handle.placement)
            rec.task_id = handle.task_id
            rec.previous_placement = None
            rec.log_paths = live_logs(provider, handle)
            rec.message = f"stage {rec.stage + 1}/{rec.stages} launched on {where(handle)}"
            self._save()
            return self.spec.poll_seconds
        tried = "; ".join(
            f"{a['where']}: {a['outcome']}"
            for a in rec.attempts
            if a["stage"] == rec.stage and a["reason"] == reason
        )
        if reason == "launch":
            # SkyPilot's `_launch(max_retry=3)`: up to three passes, the gap growing between
            # them; a pass that met no capacity error (no provider at all) is not retried.
            rec.launch_passes += 1
            retry = any(
                a["outcome"] in ("capacity", "transient")
                for a in rec.attempts[-len(order) :]
                if a["stage"] == rec.stage
            )
            if not retry or rec.launch_passes >= LAUNCH_PASSES:
                self._finish(jr.FAILED_NO_RESOURCE, f"no candidate could take the job ({tried})")
                return None
            gap = self.retry_gap * LAUNCH_BACKOFF ** (rec.launch_passes - 1)
            self._set(
                rec.status,
                f"no candidate could take the job yet ({tried}); "
                f"pass {rec.launch_passes + 1}/{LAUNCH_PASSES} in {gap:g}s",
            )
            return gap
        # Recovery never gives up (SkyPilot): the next pass searches every candidate in order.
        rec.previous_placement = None
        self._set(rec.status, f"no capacity for the relaunch; retrying in {self.retry_gap:g}s")
        return self.retry_gap

    def _launch_pass(self, order: list[Placement], reason: str) -> tuple[Handle, Provider] | None:
        rec = self.record
        for placement in order:
            if self.cancelled():
                return None
            provider = self.providers.get(placement.cloud)
            if provider is None:
                self._attempt(placement, None, reason, "no-provider", "no provider for it here")
                continue
            rec.launch_seq += 1
            sid = jr.attempt_id(self.spec.skyform_id, rec.stage, rec.launch_seq)
            if rec.task_id is None:
                rec.task_id = jr.managed_task_id(self.spec.address, rec.stage, self.clock())
            self._save()  # the seq is recorded before the launch, so a restart can adopt it
            handle = self._try_launch(provider, self._request(placement, sid), reason)
            if handle is not None:
                return handle, provider
        return None

    def _try_launch(self, provider: Provider, req: LaunchRequest, reason: str) -> Handle | None:
        for i in range(TRANSIENT_TRIES):
            try:
                handle = provider.launch(req)
            except CapacityError as exc:
                self._attempt(req.placement, req.skyform_id, reason, "capacity", str(exc))
                return None
            except TransientError as exc:
                self._attempt(req.placement, req.skyform_id, reason, "transient", str(exc))
                if i + 1 < TRANSIENT_TRIES:
                    self.sleep(min(max(exc.retry_after, 2.0**i), BACKOFF_MAX_SECONDS))
                continue
            except ProviderError as exc:
                self._attempt(req.placement, req.skyform_id, reason, "error", str(exc))
                raise _Fatal(f"launch on {req.placement.describe()} failed: {exc}") from exc
            self._attempt(req.placement, req.skyform_id, reason, "launched", None)
            return handle
        return None

    def _request(self, placement: Placement, sid: str) -> LaunchRequest:
        task = self._task()
        return LaunchRequest(
            address=self.spec.address,
            skyform_id=sid,
            kind=ResourceKind.JOB,
            task=task,
            placement=placement,
            num_nodes=task.num_nodes,
            base_dir=Path(self.spec.base_dir),
            envs=dict(self.spec.env_overrides),
            task_id=self.record.task_id,
        )

    # ---- polling and outcomes -------------------------------------------------------------

    def _poll_step(self) -> float | None:
        rec = self.record
        handle = Handle.from_dict(rec.handle or {})
        provider = self._provider_for(handle)
        if provider is None:
            self._finish(jr.FAILED, f"no provider for {handle.placement.cloud} to watch the job")
            return None
        try:
            state = provider.job_status(handle)
        except TransientError as exc:
            self._set(rec.status, f"status check failed, will retry: {exc}")
            return max(self.spec.poll_seconds, exc.retry_after)
        rec.job_state = state.value
        if state == JobState.SUCCEEDED:
            return self._stage_succeeded(provider, handle)
        if state.needs_recovery:
            return self._recover(provider, handle, state)
        if state.finished:
            return self._user_failure(provider, handle, state)
        if state == JobState.RUNNING:
            new = jr.RUNNING
        else:  # PENDING / SETTING_UP: a relaunch stays RECOVERING until its run is running
            new = jr.RECOVERING if rec.status == jr.RECOVERING else jr.STARTING
        if new != rec.status:
            self._set(new, f"stage {rec.stage + 1}/{rec.stages} {state.value} on {where(handle)}")
        return self.spec.poll_seconds

    def _stage_succeeded(self, provider: Provider, handle: Handle) -> float | None:
        rec = self.record
        rec.exit_codes = exit_codes(provider, handle)
        done = rec.stage + 1
        if done < rec.stages:
            rec.stage += 1
            rec.task_id = None
            rec.error_restarts = 0
            rec.launch_passes = 0
            rec.launch_reason = "launch"
            rec.previous_placement = None
            rec.status = jr.STARTING
            rec.message = f"stage {done}/{rec.stages} succeeded; launching the next"
        else:
            rec.status = jr.SUCCEEDED
            rec.ended_at = self.clock()
            rec.message = f"succeeded on {where(handle)}"
        self._retire(provider, handle)
        return None if rec.terminal else 0.0

    def _recover(self, provider: Provider, handle: Handle, state: JobState) -> float:
        rec = self.record
        strategy = jr.recovery_of(self._task()).strategy or jr.EAGER_NEXT_REGION
        rec.recoveries += 1
        rec.exit_codes = []
        rec.status = jr.RECOVERING
        rec.launch_reason = "recovery"
        rec.previous_placement = asdict(handle.placement)
        rec.message = f"{state.value} on {where(handle)}; recovering ({strategy})"
        self._retire(provider, handle)
        return 0.0

    def _user_failure(self, provider: Provider, handle: Handle, state: JobState) -> float | None:
        rec = self.record
        codes = exit_codes(provider, handle)
        rec.exit_codes = codes
        recovery = jr.recovery_of(self._task())
        restart, counted = jr.restart_decision(recovery, codes, rec.error_restarts)
        shown = ", ".join(str(c) for c in codes if c is not None) or "unknown"
        if restart:
            rec.restarts += 1
            rec.error_restarts += int(counted)
            rec.status = jr.RECOVERING
            rec.launch_reason = "restart"
            rec.previous_placement = asdict(handle.placement)
            why = (
                "listed in recover_on_exit_codes"
                if not counted
                else (f"restart {rec.error_restarts}/{recovery.max_restarts_on_errors}")
            )
            rec.message = f"{state.value} (exit code {shown}); restarting ({why})"
        else:
            rec.status = jr.FAILED_SETUP if state == JobState.FAILED_SETUP else jr.FAILED
            rec.ended_at = self.clock()
            rec.message = f"stage {rec.stage + 1}/{rec.stages} {state.value} (exit code {shown})"
        self._retire(provider, handle)
        return None if rec.terminal else 0.0

    def _cancel(self) -> None:
        rec = self.record
        rec.status = jr.CANCELLED
        rec.ended_at = self.clock()
        rec.message = "cancelled"
        handle = Handle.from_dict(rec.handle) if rec.handle else None
        provider = self._provider_for(handle) if handle is not None else None
        if handle is not None and provider is not None:
            self._retire(provider, handle)
        else:
            self._save()

    # ---- tearing down and adopting --------------------------------------------------------

    def _retire(self, provider: Provider, handle: Handle) -> None:
        """Archive the logs, record the resource as going (with the caller's changes), then
        terminate it; a controller killed in between finishes the job from `retiring`."""
        rec = self.record
        rec.log_paths = self._archive(provider, handle) or rec.log_paths
        rec.handle = None
        rec.retiring.append(handle.as_dict())
        self._save()
        self._terminate(provider, handle)
        rec.retiring = [h for h in rec.retiring if h["skyform_id"] != handle.skyform_id]
        self._save()

    def _archive(self, provider: Provider, handle: Handle) -> list[dict[str, Any]]:
        stage, seq = (jr.parse_attempt_id(handle.skyform_id) or ("", self.record.stage, 0))[1:]
        return jr.archive_logs(provider, handle, self.directory / "logs" / f"s{stage}-a{seq}")

    def _terminate(self, provider: Provider, handle: Handle) -> None:
        for i in range(TRANSIENT_TRIES):
            try:
                provider.terminate(handle)
                return
            except TransientError as exc:
                if i + 1 == TRANSIENT_TRIES:
                    raise
                self.sleep(min(max(exc.retry_after, 2.0**i), BACKOFF_MAX_SECONDS))

    def _adopt(self) -> None:
        """At (re)start: finish interrupted teardowns, adopt the launch a killed controller was
        making (the id of `launch_seq`), and terminate any other resource of this job."""
        rec = self.record
        current = rec.handle["skyform_id"] if rec.handle else None
        wanted = None
        if current is None and not rec.terminal and rec.launch_seq > 0:
            wanted = jr.attempt_id(self.spec.skyform_id, rec.stage, rec.launch_seq)
        retiring = {h["skyform_id"] for h in rec.retiring}
        complete = True
        for provider in {id(p): p for p in self.providers.values()}.values():
            try:
                found = provider.observe(Selector(address=self.spec.address, kind=ResourceKind.JOB))
            except SkyformError:
                complete = False  # unreachable now; what it holds is cleaned at the next start
                continue
            for res in found:
                sid = res.handle.skyform_id
                if not jr.owned_by(self.spec.skyform_id, sid) or sid == current:
                    continue
                if sid == wanted and sid not in retiring:
                    rec.handle = res.handle.as_dict()
                    rec.placement = asdict(res.handle.placement)
                    rec.task_id = res.handle.task_id
                    rec.log_paths = live_logs(provider, res.handle)
                    rec.message = f"adopted the running launch on {where(res.handle)}"
                    continue
                self._archive(provider, res.handle)
                self._terminate(provider, res.handle)
        if complete:
            rec.retiring = []
        self._save()

    # ---- helpers --------------------------------------------------------------------------

    def _task(self) -> Task:
        assert self._stages is not None
        return self._stages[min(self.record.stage, len(self._stages) - 1)]

    def _provider_for(self, handle: Handle) -> Provider | None:
        return self.providers.get(handle.placement.cloud)

    def _attempt(
        self, placement: Placement, sid: str | None, reason: str, outcome: str, error: str | None
    ) -> None:
        self.record.add_attempt(
            {
                "stage": self.record.stage,
                "seq": self.record.launch_seq if sid else None,
                "skyform_id": sid,
                "placement": asdict(placement),
                "where": placement.describe(),
                "reason": reason,
                "outcome": outcome,
                "error": error,
                "time": self.clock(),
            }
        )
        self._save()

    def _set(self, status: str, message: str) -> None:
        self.record.status = status
        self.record.message = message
        self._save()

    def _finish(self, status: str, message: str) -> None:
        self.record.ended_at = self.clock()
        self._set(status, message)

    def _save(self) -> None:
        data = self.record.to_json()
        write_status(self.directory, data)
        if self.status_sink is not None:
            self.status_sink(data)
