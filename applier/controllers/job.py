"""The managed-job controller: runs a job's stages to completion, failing over on launch,
recovering after preemption or node loss, restarting after user-code failures as `job_recovery`
allows (SkyPilot's jobs controller and recovery strategies, `sky/jobs/`).

Run as `python -m applier.controllers.job <controller dir>` (see `common.start`); the logic is
`JobRunner`, which takes its providers, clock and sleep so tests drive it in-process.

Semantics:
- Stages run serially (a pipeline's documents in order; a single task is one stage). Each
  stage's resource is torn down when it ends, as managed jobs tear down their cluster.
- Every launch gets its own skyform id, `job_record.attempt_id(spec.skyform_id, stage, seq)`;
  `owned_by(spec.skyform_id, id)` tells the applier which provider resources are the job's.
- Initial launch of a stage: one pass over `spec.candidates` in order; CapacityError moves to the
  next, TransientError retries the same one with backoff (bounded), ProviderError stops the job
  (FAILED). As SkyPilot's `_launch(max_retry=3)`, a pass that met capacity errors is repeated
  after `retry_gap` (then x1.6), three passes in all; then the job ends FAILED_NO_RESOURCE,
  every attempt listed (`launch_passes` counts the passes of the current stage).
- PREEMPTED / NODE_LOST: RECOVERING; the resource is terminated and relaunched, first in the
  strategy's order (FAILOVER: same placement first; EAGER_NEXT_REGION, the default: another
  (cloud, region) first), then plan order; as SkyPilot, recovery never gives up: a pass with no
  capacity is retried after `retry_gap` (60 s). Recoveries do not count toward restarts.
- FAILED / FAILED_SETUP (user code): an exit code in `recover_on_exit_codes` always restarts;
  else up to `max_restarts_on_errors` restarts (per stage), then the job ends FAILED(_SETUP).
  A restart relaunches like a recovery.
- Cancel (the `cancel` file or SIGTERM): the current resource is terminated, CANCELLED.
- Logs are copied to `<dir>/logs/s<stage>-a<seq>/` before any resource is terminated.
- Restart-safe: everything is in status.json, written before each provider call that creates or
  removes something; a restarted controller adopts the recorded resource (or the launch it was
  making), terminates stray attempts, and never launches a duplicate.

status.json (stable; `skyform status/logs` and the applier read it):
  status        PENDING | STARTING | RUNNING | RECOVERING | SUCCEEDED | FAILED | FAILED_SETUP |
                FAILED_NO_RESOURCE | CANCELLED (the last five are terminal)
  address       the job's address
  stage, stages current stage index (0-based) and how many; stage_names: each task's name
  placement     the current (or last) Placement as a dict; handle: Handle.as_dict() of the live
                resource, None between launches and after the end
  job_state     the provider's last JobState of the run
  attempts      every launch try, oldest first (last 200): {"stage", "seq", "skyform_id",
                "placement", "where", "reason" (launch|recovery|restart), "outcome" (launched|
                capacity|transient|error|no-provider), "error", "time"}
  recoveries    relaunches after preemption / node loss; restarts: after user-code failures
                (error_restarts: of those, the ones counted against max_restarts_on_errors)
  message       a human-readable line on what is happening / why it ended
  log_paths     [{"rank", "stage" (setup|run|exec), "path"}]: live files while running, the
                archived copies under <dir>/logs/ once that attempt ended
  exit_codes    per node, of the last finished run
  task_id       SKYPILOT_TASK_ID of the current stage (kept across its recoveries)
  started_at, ended_at, updated_at: epoch seconds; launch_seq, launch_reason,
  previous_placement, retiring: the controller's own bookkeeping
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from applier.controllers.common import (
    cancel_requested,
    providers_for,
    read_spec,
    register_self,
    write_status,
)
from applier.controllers.job_runner import JobRunner

__all__ = ["JobRunner", "main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m applier.controllers.job <controller dir>", file=sys.stderr)
        return 2
    directory = Path(args[0])
    stop = {"term": False}

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop["term"] = True  # handled between steps: a provider call is never cut in half

    # Installed before registering, so request_cancel's SIGTERM always means "cancel".
    signal.signal(signal.SIGTERM, on_term)
    register_self(directory)
    spec = read_spec(directory)
    if spec is None:
        print(f"no spec.json in {directory}", file=sys.stderr)
        return 2
    # `common.start` sets SKYFORM_HOME; the layout <home>/controllers/<dir> is the fallback.
    home = Path(os.environ.get("SKYFORM_HOME") or directory.parent.parent)
    providers = providers_for(spec.placements(), home, spec.provider_settings)

    def cancelled() -> bool:
        return stop["term"] or cancel_requested(directory)

    def sleep(seconds: float) -> None:
        # In slices, so a cancel during a long gap (a 60 s recovery retry) acts promptly.
        deadline = time.monotonic() + seconds
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))

    runner = JobRunner(spec, providers, directory, sleep=sleep, cancelled=cancelled)
    try:
        status = runner.run()
    except Exception as exc:
        # Left non-terminal on purpose: a controller started again adopts the job from here.
        write_status(directory, {**runner.record.to_json(), "message": f"controller error: {exc}"})
        raise
    print(f"{spec.address}: {status}: {runner.record.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
