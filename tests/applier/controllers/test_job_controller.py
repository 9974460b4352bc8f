"""The managed-job controller: its logic driven in-process over the fake provider (failover,
recovery strategies, restarts, cancel, adoption after a crash), and the real detached controller
over the local provider recovering a job whose node was killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from applier.controllers import common
from applier.controllers import job_record as jr
from applier.controllers.common import ControllerSpec, read_status, request_cancel
from applier.controllers.job import JobRunner
from applier.provider import Handle, Placement
from applier.providers.fake import Call, FakeProvider, PlaceRule
from applier.providers.local import LocalProvider
from applier.providers.local_node import is_alive, read_json
from tests.waiting import wait_for

EAST = Placement("aws", "us-east-1")
WEST = Placement("aws", "us-west-2")
GCP = Placement("gcp", "us-central1")
JOB_ID = "0123456789abcdef"
ADDRESS = "job.train"


class Crash(Exception):
    """Raised from the status sink to kill the runner at an exact point, as SIGKILL would."""


class Harness:
    """A runner over one FakeProvider serving both clouds, on a fake clock."""

    def __init__(self, tmp_path: Path, yaml: str, run_polls: int = 2) -> None:
        self.directory = tmp_path / "ctl"
        self.directory.mkdir(exist_ok=True)
        self.fake = FakeProvider(log_dir=tmp_path / "fake-logs", run_polls=run_polls)
        self.spec = make_spec(yaml, tmp_path, (EAST, WEST, GCP))
        self.now = 1_000_000.0
        self.sleeps: list[float] = []
        self.statuses: list[str] = []
        self.messages: list[str] = []
        self.crash_when: Callable[[Mapping[str, Any]], bool] = lambda _: False
        self.runner = self.new_runner()

    def new_runner(self) -> JobRunner:
        return JobRunner(
            self.spec,
            {"aws": self.fake, "gcp": self.fake},
            self.directory,
            clock=lambda: self.now,
            sleep=self.sleep,
            status_sink=self.sink,
        )

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def sink(self, status: Mapping[str, Any]) -> None:
        self.messages.append(status["message"])
        if not self.statuses or self.statuses[-1] != status["status"]:
            self.statuses.append(status["status"])
        if self.crash_when(status):
            raise Crash

    def step_until(self, status: str) -> None:
        for _ in range(50):
            if self.runner.record.status == status:
                return
            assert self.runner.step() is not None, f"ended {self.runner.record.status}"
        raise AssertionError(f"never reached {status}")

    def handle(self) -> Handle:
        assert self.runner.record.handle is not None
        return Handle.from_dict(self.runner.record.handle)

    def launched(self) -> list[Placement | None]:
        """Placements of the launches that created something, in order."""
        ids = {a["skyform_id"] for a in self.runner.record.attempts if a["outcome"] == "launched"}
        out: dict[str | None, Placement | None] = {}
        for c in self.fake.calls:
            if c.verb == "launch" and c.skyform_id in ids:
                out.setdefault(c.skyform_id, c.placement)  # retries of one id count once
        return list(out.values())

    def verbs(self) -> list[Call]:
        return [c for c in self.fake.calls if c.verb in ("launch", "terminate")]


def make_spec(
    yaml: str, base: Path, candidates: tuple[Placement, ...], poll: float = 0.2
) -> ControllerSpec:
    return ControllerSpec(
        kind="job",
        address=ADDRESS,
        skyform_id=JOB_ID,
        source_text=yaml,
        source_file="jobs/train.yaml",
        base_dir=str(base),
        candidates=tuple(asdict(c) for c in candidates),
        poll_seconds=poll,
    )


def recovery_yaml(run: str = "python train.py", **recovery: Any) -> str:
    lines = [f"run: {run}", "resources:", "  job_recovery:"]
    lines += [f"    {k}: {v}" for k, v in recovery.items()] or ["    strategy: null"]
    return "\n".join(lines) + "\n"


# ---- the logic, over the fake provider ----------------------------------------------------


def test_a_job_runs_to_success_and_its_resource_is_torn_down_with_logs_kept(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, "run: echo hello\n")
    assert h.runner.run() == jr.SUCCEEDED
    assert h.statuses == [jr.PENDING, jr.STARTING, jr.RUNNING, jr.SUCCEEDED]
    assert h.launched() == [EAST]
    assert h.fake.resources() == []
    status = read_status(h.directory)
    assert status["status"] == jr.SUCCEEDED and status["exit_codes"] == [0]
    [log] = status["log_paths"]
    assert Path(log["path"]).read_text().startswith("echo hello")
    assert h.sleeps == [0.2, 0.2, 0.2]  # after the launch and after each RUNNING report


def test_a_pipeline_runs_its_stages_in_order_each_torn_down_before_the_next(
    tmp_path: Path,
) -> None:
    yaml = "name: p\n---\nname: prep\nrun: echo a\n---\nname: train\nrun: echo b\n"
    h = Harness(tmp_path, yaml)
    assert h.runner.run() == jr.SUCCEEDED
    calls = [(c.verb, jr.parse_attempt_id(c.skyform_id or "")) for c in h.verbs()]
    assert calls == [
        ("launch", (JOB_ID, 0, 1)),
        ("terminate", (JOB_ID, 0, 1)),
        ("launch", (JOB_ID, 1, 2)),
        ("terminate", (JOB_ID, 1, 2)),
    ]
    status = read_status(h.directory)
    assert (status["stage"], status["stages"]) == (1, 2)
    assert status["stage_names"] == ["prep", "train"]
    assert Path(status["log_paths"][0]["path"]).read_text().startswith("echo b")
    assert (h.directory / "logs" / "s0-a1" / "rank0-run.log").read_text().startswith("echo a")


def test_capacity_errors_fail_over_in_plan_order_and_every_attempt_is_recorded(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.fake.fail_capacity(PlaceRule(cloud="aws"))
    assert h.runner.run() == jr.SUCCEEDED
    attempts = [(a["where"], a["outcome"]) for a in h.runner.record.attempts]
    assert attempts == [
        ("aws/us-east-1", "capacity"),
        ("aws/us-west-2", "capacity"),
        ("gcp/us-central1", "launched"),
    ]
    assert read_status(h.directory)["placement"] == asdict(GCP)


def test_all_candidates_exhausted_is_failed_no_resource_listing_the_attempts(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.fake.fail_capacity(PlaceRule())
    assert h.runner.run() == jr.FAILED_NO_RESOURCE
    status = read_status(h.directory)
    # SkyPilot's three passes over the candidates, 60 s then 96 s apart.
    assert [a["outcome"] for a in status["attempts"]] == ["capacity"] * 9
    assert h.sleeps == [60.0, 96.0] and status["launch_passes"] == 3
    for where in ("aws/us-east-1", "aws/us-west-2", "gcp/us-central1"):
        assert where in status["message"]
    assert h.fake.resources() == [] and status["handle"] is None


def test_a_first_launch_waits_for_capacity_to_free_up_in_a_later_pass(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.fake.fail_capacity(PlaceRule(), times=4)  # full for the first pass and a bit of the next
    assert h.runner.run() == jr.SUCCEEDED
    outcomes = [(a["where"], a["outcome"]) for a in h.runner.record.attempts]
    assert outcomes[3:] == [("aws/us-east-1", "capacity"), ("aws/us-west-2", "launched")]
    assert h.sleeps[0] == 60.0 and any("pass 2/3 in 60s" in m for m in h.messages)


def test_a_first_launch_with_no_provider_for_any_candidate_fails_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.runner.providers = {}
    assert h.runner.run() == jr.FAILED_NO_RESOURCE
    assert h.sleeps == [] and h.runner.record.launch_passes == 1


def test_transient_launch_errors_retry_the_same_candidate_with_backoff(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.fake.fail_transient("launch", 2)
    assert h.runner.run() == jr.SUCCEEDED
    assert [a["outcome"] for a in h.runner.record.attempts] == [
        "transient",
        "transient",
        "launched",
    ]
    assert h.launched() == [EAST]
    assert h.sleeps[:2] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("strategy", "first_blocked", "relaunched_on"),
    [
        ("FAILOVER", False, EAST),
        ("FAILOVER", True, WEST),  # placed on WEST at first: recovery goes back there first
        ("EAGER_NEXT_REGION", False, WEST),
        ("null", False, WEST),  # SkyPilot's default is EAGER_NEXT_REGION
    ],
)
def test_preemption_recovers_where_the_strategy_says(
    tmp_path: Path, strategy: str, first_blocked: bool, relaunched_on: Placement
) -> None:
    h = Harness(tmp_path, recovery_yaml(strategy=strategy), run_polls=3)
    if first_blocked:
        h.fake.fail_capacity(PlaceRule(region="us-east-1"), times=1)
    h.step_until(jr.RUNNING)
    h.fake.preempt(h.handle())
    assert h.runner.run() == jr.SUCCEEDED
    assert h.launched() == [WEST if first_blocked else EAST, relaunched_on]
    assert jr.RECOVERING in h.statuses
    record = h.runner.record
    assert (record.recoveries, record.restarts) == (1, 0)
    assert [a["reason"] for a in record.attempts if a["outcome"] == "launched"] == [
        "launch",
        "recovery",
    ]
    assert h.fake.resources() == []


def test_failover_recovery_moves_on_when_the_same_place_has_no_capacity(tmp_path: Path) -> None:
    h = Harness(tmp_path, recovery_yaml(strategy="FAILOVER"), run_polls=3)
    h.step_until(jr.RUNNING)
    h.fake.fail_capacity(PlaceRule(region="us-east-1"))
    h.fake.lose_node(h.handle())
    assert h.runner.run() == jr.SUCCEEDED
    assert h.launched() == [EAST, WEST]
    assert [a["outcome"] for a in h.runner.record.attempts] == ["launched", "capacity", "launched"]


def test_recovery_without_capacity_keeps_retrying_after_a_gap(tmp_path: Path) -> None:
    h = Harness(tmp_path, recovery_yaml(strategy="FAILOVER"), run_polls=3)
    h.step_until(jr.RUNNING)
    h.fake.fail_capacity(PlaceRule(), times=4)  # the first pass (3) and one more
    h.fake.preempt(h.handle())
    assert h.runner.run() == jr.SUCCEEDED
    assert 60.0 in h.sleeps
    assert h.launched() == [EAST, WEST]  # after the gap the search is in plan order again
    assert h.runner.record.recoveries == 1


def test_user_code_failure_restarts_up_to_max_restarts_then_fails(tmp_path: Path) -> None:
    h = Harness(tmp_path, recovery_yaml(max_restarts_on_errors=2))
    h.fake.set_exit_codes(ADDRESS, 3)
    assert h.runner.run() == jr.FAILED
    record = h.runner.record
    assert (record.restarts, record.error_restarts, record.recoveries) == (2, 2, 0)
    assert len(h.launched()) == 3 and record.exit_codes == [3]
    assert "exit code 3" in record.message
    assert len({a["skyform_id"] for a in record.attempts}) == 3  # a new id per launch
    assert h.fake.resources() == []
    assert Path(record.log_paths[0]["path"]).is_file()


def test_without_job_recovery_a_failure_is_final(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: exit 1\n")
    h.fake.set_exit_codes(ADDRESS, 1)
    assert h.runner.run() == jr.FAILED
    assert len(h.launched()) == 1 and h.runner.record.restarts == 0


def test_an_exit_code_in_recover_on_exit_codes_always_restarts(tmp_path: Path) -> None:
    h = Harness(tmp_path, recovery_yaml(recover_on_exit_codes="[33]"))
    h.fake.set_exit_codes(ADDRESS, 33)
    while h.runner.step() is not None:
        if h.runner.record.restarts == 3:
            h.fake.set_exit_codes(ADDRESS, 0)  # the fourth launch succeeds
    record = h.runner.record
    assert record.status == jr.SUCCEEDED
    assert (record.restarts, record.error_restarts) == (3, 0)
    assert len(h.launched()) == 4


def test_cancel_terminates_the_running_resource(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: sleep 100\n", run_polls=100)
    h.step_until(jr.RUNNING)
    request_cancel(h.directory)
    assert h.runner.run() == jr.CANCELLED
    assert h.fake.resources() == []
    assert read_status(h.directory)["handle"] is None


def test_a_restarted_controller_adopts_the_running_stage(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: echo hi\n", run_polls=3)
    h.step_until(jr.RUNNING)
    h.runner = h.new_runner()  # the first controller died; a new one reads status.json
    assert h.runner.run() == jr.SUCCEEDED
    assert len(h.launched()) == 1 and len([c for c in h.verbs() if c.verb == "launch"]) == 1


def test_a_controller_killed_mid_launch_adopts_what_that_launch_created(tmp_path: Path) -> None:
    h = Harness(tmp_path, "run: echo hi\n")
    h.fake.fail_capacity(PlaceRule(region="us-east-1"))
    h.crash_when = lambda s: bool(s["attempts"]) and s["attempts"][-1]["outcome"] == "launched"
    with pytest.raises(Crash):
        h.runner.run()
    assert read_status(h.directory)["handle"] is None  # it died before recording the handle
    h.crash_when = lambda _: False
    h.runner = h.new_runner()
    assert h.runner.run() == jr.SUCCEEDED
    assert [c.placement for c in h.fake.calls if c.verb == "launch"] == [EAST, WEST]


def test_a_controller_killed_mid_recovery_terminates_the_lost_resource_once(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, recovery_yaml(strategy="FAILOVER"), run_polls=3)
    h.step_until(jr.RUNNING)
    lost = h.handle()
    h.fake.preempt(lost)
    h.crash_when = lambda s: bool(s["retiring"])
    with pytest.raises(Crash):
        h.runner.run()
    assert lost in h.fake.resources()  # recorded as retiring, not yet terminated
    h.crash_when = lambda _: False
    h.runner = h.new_runner()
    assert h.runner.run() == jr.SUCCEEDED
    assert h.runner.record.recoveries == 1
    assert len(h.launched()) == 2 and h.fake.resources() == []


def test_attempt_ids_differ_in_their_first_eight_characters_and_parse_back() -> None:
    ids = [jr.attempt_id(JOB_ID, 0, seq) for seq in range(1, 50)]
    assert len({i[:8] for i in ids}) == len(ids)
    assert jr.parse_attempt_id(ids[4]) == (JOB_ID, 0, 5)
    assert jr.owned_by(JOB_ID, ids[0]) and not jr.owned_by("other", ids[0])
    assert jr.parse_attempt_id(f"00000000-{JOB_ID}-s0-a1") is None


# ---- the real controller process over the local provider ----------------------------------

LOCAL = Placement("local", cpus=0.1, memory_gib=0.1)


@pytest.fixture
def launch_controller(tmp_path: Path) -> Iterator[Callable[[str], tuple[Path, Path]]]:
    """Starts real detached controllers; at teardown stops them and leaves no process."""
    started: list[tuple[Path, Path]] = []

    def launch(yaml: str) -> tuple[Path, Path]:
        home = tmp_path / "home"
        directory = common.start(home, make_spec(yaml, tmp_path, (LOCAL,)))
        started.append((home, directory))
        return home, directory

    yield launch
    for home, directory in started:
        request_cancel(directory)
        if not common.wait_stopped(directory, timeout=15):
            rec = read_json(directory / common.PID_FILE)
            if rec is not None and is_alive(int(rec["pid"]), int(rec["start_time"])):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(rec["pid"]), signal.SIGKILL)
        provider = LocalProvider(home, grace_s=0.5)
        for res in provider.observe():
            provider.terminate(res.handle)


def status_is(directory: Path, *wanted: str) -> dict[str, Any] | None:
    status = read_status(directory)
    return status if status.get("status") in wanted else None


def test_the_controller_recovers_a_job_whose_node_was_killed(
    launch_controller: Callable[[str], tuple[Path, Path]],
) -> None:
    home, directory = launch_controller("run: sleep 3; echo done\n")
    running = wait_for(lambda: status_is(directory, jr.RUNNING), "the job to run")
    first = Handle.from_dict(running["handle"])
    node = read_json(home / "local" / first.resource_id / "node-0" / "state" / "pid.json")
    assert node is not None
    os.killpg(int(node["pgid"]), signal.SIGKILL)

    final = wait_for(lambda: status_is(directory, *jr.TERMINAL), "the job to end")
    assert final["status"] == jr.SUCCEEDED, final["message"]
    assert (final["recoveries"], final["restarts"]) == (1, 0)
    launched = [a for a in final["attempts"] if a["outcome"] == "launched"]
    assert [a["reason"] for a in launched] == ["launch", "recovery"]
    assert first.skyform_id != launched[1]["skyform_id"]
    [log] = [p for p in final["log_paths"] if p["stage"] == "run"]
    assert "done" in Path(log["path"]).read_text()
    assert wait_for(lambda: not common.is_running(directory), "the controller to exit")
    assert LocalProvider(home).observe() == []


def test_a_failing_job_restarts_once_then_fails_with_its_logs_readable(
    launch_controller: Callable[[str], tuple[Path, Path]],
) -> None:
    yaml = recovery_yaml(run="echo attempt; exit 7", max_restarts_on_errors=1)
    home, directory = launch_controller(yaml)
    final = wait_for(lambda: status_is(directory, *jr.TERMINAL), "the job to end")
    assert final["status"] == jr.FAILED, final["message"]
    assert final["exit_codes"] == [7] and final["restarts"] == 1
    assert [a["outcome"] for a in final["attempts"]] == ["launched", "launched"]
    [log] = [p for p in final["log_paths"] if p["stage"] == "run"]
    assert Path(log["path"]).read_text() == "attempt\n"
    assert len(list((directory / "logs").iterdir())) == 2  # both attempts' logs kept
    assert common.wait_stopped(directory, timeout=30)  # teardown follows the terminal status
    assert LocalProvider(home).observe() == []


def test_cancelling_a_running_job_stops_the_controller_and_its_node(
    launch_controller: Callable[[str], tuple[Path, Path]],
) -> None:
    home, directory = launch_controller("run: sleep 60\n")
    running = wait_for(lambda: status_is(directory, jr.RUNNING), "the job to run")
    node = read_json(
        home / "local" / running["handle"]["resource_id"] / "node-0" / "state" / "pid.json"
    )
    assert node is not None
    request_cancel(directory)
    assert common.wait_stopped(directory, timeout=15)
    assert read_status(directory)["status"] == jr.CANCELLED
    assert not is_alive(int(node["pid"]), int(node["start_time"]))
    assert LocalProvider(home).observe() == []


def test_a_controller_killed_and_started_again_adopts_the_running_job(
    launch_controller: Callable[[str], tuple[Path, Path]],
) -> None:
    home, directory = launch_controller("run: sleep 2; echo done\n")
    wait_for(lambda: status_is(directory, jr.RUNNING), "the job to run")
    controller = read_json(directory / common.PID_FILE)
    assert controller is not None
    os.kill(int(controller["pid"]), signal.SIGKILL)
    assert common.wait_stopped(directory, timeout=10)

    spec = common.read_spec(directory)
    assert spec is not None
    assert common.start(home, spec) == directory
    final = wait_for(lambda: status_is(directory, *jr.TERMINAL), "the job to end")
    assert final["status"] == jr.SUCCEEDED, final["message"]
    assert [a["outcome"] for a in final["attempts"]] == ["launched"]  # adopted, not relaunched
    assert final["recoveries"] == 0
    # The terminal status is written before the teardown that follows it; wait for the exit.
    assert common.wait_stopped(directory, timeout=30)
    assert LocalProvider(home).observe() == []
