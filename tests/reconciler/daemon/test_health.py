"""The leader's health tick: a managed job whose controller process dies (not its node) is
picked up again by a new controller on the same directory, which adopts the running node, so
the job finishes without a relaunch; a controller that keeps dying is restarted with back-off."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from applier.controllers import common
from applier.providers.local_node import read_json
from reconciler.daemon.health import BACKOFF_FIRST_S, ControllerHealth
from tests.reconciler.daemon._support import Remote, config, live, metric, running, wait_for

JOB = "name: long\nresources: {infra: local, cpus: 0.1, memory: 0.1}\nrun: sleep 6; echo done\n"


def _controller(home: Path) -> Path:
    (directory,) = [d for d, spec in common.list_controllers(home) if spec.address == "job.long"]
    return directory


def _pid(directory: Path) -> int:
    rec = read_json(directory / common.PID_FILE)
    assert rec is not None
    return int(rec["pid"])


def test_a_dead_job_controller_is_started_again_and_adopts_its_running_node(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    settings = config(poll="0.5s", drift="1h", health_interval="0.5s")
    remote.commit({"skyform.yaml": settings, "jobs/long.yaml": JOB})
    with running(remote.url, skyform_home, tmp_path / "d.log") as d:
        directory = wait_for("the job's controller", lambda: _controller_if_any(skyform_home))
        wait_for(
            "the job to run",
            lambda: common.read_status(directory).get("status") == "RUNNING",
        )
        node = live(skyform_home)["job.long"]
        first = _pid(directory)
        os.kill(first, signal.SIGKILL)

        wait_for(
            "a new controller on the same directory",
            lambda: common.is_running(directory) and _pid(directory) != first,
            timeout=20,
        )
        wait_for(
            "the job to finish",
            lambda: common.read_status(directory).get("status") == "SUCCEEDED",
            timeout=60,
        )
        status = common.read_status(directory)
        # Adopted, never relaunched: one launch, no recovery, and the node it ran on was the
        # one that was running when its controller died.
        assert [a["outcome"] for a in status["attempts"]] == ["launched"]
        assert status["recoveries"] == 0
        assert status["attempts"][0]["skyform_id"] == node[0]
        restarts = metric(d.metrics(), 'skyform_controller_restarts_total{address="job.long"}')
        assert restarts == 1
        assert _controller(skyform_home) == directory  # not recreated as drift


def _controller_if_any(home: Path) -> Path | None:
    found = [d for d, spec in common.list_controllers(home) if spec.address == "job.long"]
    return found[0] if found else None


def test_a_controller_that_keeps_dying_is_restarted_with_back_off(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = common.ControllerSpec(
        kind="no_such_controller",  # its process exits at once, as a crash-looping one would
        address="job.crashy",
        skyform_id="0123456789abcdef",
        source_text="run: echo hi\n",
        source_file="jobs/crashy.yaml",
        base_dir=str(tmp_path),
        candidates=(),
    )
    directory = common.controller_dir(home, spec.address, spec.skyform_id)
    common.write_spec(directory, spec)
    common.write_status(directory, {"status": "RUNNING"})
    now = [1000.0]
    revived: list[str] = []
    health = ControllerHealth(home, revived.append, clock=lambda: now[0])

    assert health.tick() == ["job.crashy"]
    assert health.tick() == []  # dead again at once, but not before its delay
    now[0] += BACKOFF_FIRST_S
    assert health.tick() == ["job.crashy"]
    now[0] += BACKOFF_FIRST_S  # the delay doubled
    assert health.tick() == []
    now[0] += BACKOFF_FIRST_S
    assert health.tick() == ["job.crashy"]
    assert revived == ["job.crashy"] * 3

    # Ended work, or a cancel someone asked for, is never restarted.
    now[0] += 3600
    (directory / common.CANCEL_FILE).touch()
    assert health.tick() == []
    (directory / common.CANCEL_FILE).unlink()
    common.write_status(directory, {"status": "SUCCEEDED"})
    assert health.tick() == []
