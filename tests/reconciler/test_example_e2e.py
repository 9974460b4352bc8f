"""The example repo, for real on this machine: apply its local resources, watch the jobs finish,
call the service through its load balancer, recover a job whose node is killed, destroy all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from applier.provider import Handle
from applier.providers.local import LocalProvider
from applier.providers.local_node import read_json
from reconciler.cli import main
from tests.conftest import EXAMPLES

LOCAL = ["cluster.dev", "job.train-tiny", "job.allreduce", "job.data-pipeline", "service.echo-api"]
LONG_JOB = """
name: long
resources: {infra: local, cpus: 0.1, memory: 0.1, job_recovery: {strategy: FAILOVER}}
run: |
  sleep 3
  echo finished-after-recovery
"""


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _status(root: Path) -> dict[str, dict[str, Any]]:
    code, out = _cli("status", "--format", "json", "--repo", str(root))
    assert code == 0, out
    return {r["address"]: r for r in json.loads(out)}


def _wait(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_example_repo_runs_here(tmp_path: Path, skyform_home: Path) -> None:
    root = tmp_path / "repo-layout"
    shutil.copytree(EXAMPLES / "repo-layout", root)
    targets = [a for t in LOCAL for a in ("--target", t)]
    done = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED")

    def finish(address: str) -> None:
        _wait(f"{address} to finish", lambda: _status(root)[address]["status"] in done)
        record = _status(root)[address]
        assert record["status"] == "SUCCEEDED", record

    try:
        # The example's local resources fill a 2-CPU machine exactly (the dev box's 0.5, then
        # 0.25 for each of four job nodes and two replicas): they all run at once.
        code, out = _cli("apply", str(root), "--yes", *targets)
        assert code == 0, out
        assert set(_status(root)) == set(LOCAL)
        for job in ("job.train-tiny", "job.allreduce", "job.data-pipeline"):
            finish(job)

        # Kill a long job's node: its controller recovers it and it still finishes.
        (root / "jobs" / "long.yaml").write_text(LONG_JOB)
        targets += ["--target", "job.long"]
        code, out = _cli("apply", str(root), "--yes", "--target", "job.long")
        assert code == 0, out

        def long_running() -> bool:
            return _status(root)["job.long"]["status"] == "RUNNING"

        _wait("job.long to run", long_running)
        handle = _job_handle(skyform_home, "job.long")
        node = read_json(
            skyform_home / "local" / handle.resource_id / "node-0" / "state" / "pid.json"
        )
        assert node is not None
        os.killpg(int(node["pgid"]), signal.SIGKILL)
        finish("job.long")
        code, out = _cli("logs", "job.long")
        assert "finished-after-recovery" in out
        code, out = _cli("logs", "job.allreduce")
        assert "total 500500 (expected 500500)" in out

        # The service answers through its load balancer.
        endpoint = _status(root)["service.echo-api"]["endpoint"]
        assert endpoint and endpoint.startswith("http://127.0.0.1:")

        def serving() -> bool:
            try:
                with urllib.request.urlopen(f"{endpoint}/hello", timeout=5) as resp:
                    return resp.status == 200 and b"/hello" in resp.read()
            except OSError:
                return False

        _wait("the service to answer through its load balancer", serving)

        # A second apply with nothing changed is a no-op, finished jobs included.
        code, out = _cli("plan", str(root), "--detailed-exitcode", *targets)
        assert code == 0, out
        # cluster.dev is protected: destroy refuses it until the protection is lifted and applied.
        code, out = _cli("destroy", "--repo", str(root), "--yes")
        assert code == 1 and "cluster.dev is protected and cannot be deleted" in out
        assert len(LocalProvider(skyform_home).observe()) >= 1
    finally:
        dev = root / "clusters" / "dev.yaml"
        dev.write_text(dev.read_text().replace("protect: true", "protect: false"))
        config = root / "skyform.yaml"
        config.write_text(config.read_text().replace("protect: [cluster.dev]", "protect: []"))
        _cli("apply", str(root), "--yes", *targets)
        code, out = _cli("destroy", "--repo", str(root), "--yes")
    assert code == 0, out
    assert LocalProvider(skyform_home).observe() == []
    assert not [p for p in (skyform_home / "local").iterdir() if not p.name.startswith(".")]
    controllers = skyform_home / "controllers"
    assert not controllers.exists() or not list(controllers.iterdir())


def _job_handle(home: Path, address: str) -> Handle:
    for res in LocalProvider(home).observe():
        if res.handle.address == address:
            return res.handle
    raise AssertionError(f"{address} has no live resource")
