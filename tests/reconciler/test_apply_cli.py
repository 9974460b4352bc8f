"""`skyform apply / status / logs / destroy` on the local provider, with real processes.

Includes the crash test: kill -9 `skyform apply` (and `destroy`) at random points; each rerun
converges with no orphaned process and no duplicate resource, checked against the provider's
own view.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from applier.providers.local import LocalProvider
from reconciler.cli import main
from tests.planner.plan_helpers import write_repo

REPO = {
    "skyform.yaml": "infra: [local]\npolicy: {prune: true}\n",
    "clusters/a.yaml": (
        "resources: {cpus: 0.1, memory: 0.1}\nsetup: echo setup-a\nrun: echo run-a\n"
    ),
    "clusters/b.yaml": "resources: {cpus: 0.1, memory: 0.1}\nrun: echo run-b\n",
    "clusters/c.yaml": (
        "resources: {cpus: 0.1, memory: 0.1}\nrun: echo run-c\nskyform: {depends_on: [cluster.a]}\n"
    ),
}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _live(home: Path) -> list[str]:
    return sorted(o.handle.address for o in LocalProvider(home).observe())


def test_apply_status_logs_destroy(tmp_path: Path, skyform_home: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0, out
    assert "Apply complete: 3 resource(s) changed." in out
    assert _live(skyform_home) == ["cluster.a", "cluster.b", "cluster.c"]
    code, out = _cli("status", "--format", "json", "--repo", str(root))
    rows = json.loads(out)
    assert [(r["address"], r["status"], r["infra"]) for r in rows] == [
        ("cluster.a", "UP", "local"),
        ("cluster.b", "UP", "local"),
        ("cluster.c", "UP", "local"),
    ]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, out = _cli("logs", "cluster.a")
        if "run-a" in out:
            break
        time.sleep(0.2)
    assert "setup-a" in out and "run-a" in out
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0 and "No changes." in out
    code, out = _cli("destroy", "--repo", str(root), "--yes")
    assert code == 0, out
    assert _live(skyform_home) == []
    assert not [p for p in (skyform_home / "local").iterdir() if not p.name.startswith(".")]
    code, out = _cli("status", "--format", "json")
    assert json.loads(out) == []


def test_apply_without_a_terminal_needs_yes(tmp_path: Path, skyform_home: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    code, out = _cli("apply", str(root))
    assert code == 1 and "pass --yes" in out
    assert _live(skyform_home) == []


def test_saved_plan_is_applied_or_refused_when_stale(tmp_path: Path, skyform_home: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    saved = tmp_path / "plan.json"
    assert _cli("plan", str(root), "--out", str(saved))[0] == 0
    code, out = _cli("apply", str(saved))
    assert code == 0, out
    assert _live(skyform_home) == ["cluster.a", "cluster.b", "cluster.c"]
    code, out = _cli("apply", str(saved))
    assert code == 1 and "saved plan is stale: state serial is" in out
    _cli("destroy", "--repo", str(root), "--yes")


def _spawn(args: list[str], home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SKYFORM_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKYFORM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _state_addresses(root: Path, home: Path) -> list[str]:
    out = _run(["status", "--format", "json", "--repo", str(root)], home)
    return sorted(r["address"] for r in json.loads(out.stdout))


@pytest.mark.slow
def test_kill_9_apply_at_random_points_never_orphans_or_duplicates(
    tmp_path: Path, skyform_home: Path
) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    rng = random.Random(int(os.environ.get("SKYFORM_CRASH_SEED", "7")))
    iterations = int(os.environ.get("SKYFORM_CRASH_ITERATIONS", "20"))
    try:
        for i in range(iterations):
            command = (
                ["apply", str(root), "--yes"]
                if i % 2 == 0
                else ["destroy", "--repo", str(root), "--yes"]
            )
            proc = _spawn(command, skyform_home)
            time.sleep(rng.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            done = _run(command, skyform_home)
            assert done.returncode == 0, f"iteration {i}: {done.stdout}\n{done.stderr}"
            expected = ["cluster.a", "cluster.b", "cluster.c"] if i % 2 == 0 else []
            live = _live(skyform_home)
            assert live == expected, f"iteration {i}: provider sees {live}"
            assert _state_addresses(root, skyform_home) == expected, f"iteration {i}"
    finally:
        _run(["destroy", "--repo", str(root), "--yes"], skyform_home)
    assert _live(skyform_home) == []


def test_declared_stopped_cluster_is_stopped_and_started_in_place(
    tmp_path: Path, skyform_home: Path
) -> None:
    root = write_repo(tmp_path / "repo", {k: v for k, v in REPO.items() if k != "clusters/c.yaml"})
    assert _cli("apply", str(root), "--yes")[0] == 0
    b = root / "clusters" / "b.yaml"
    b.write_text(REPO["clusters/b.yaml"] + "skyform: {state: stopped}\n")
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0, out
    assert re.search(r'\+ skyform\.state\s+= "stopped"', out), out
    states = {o.handle.address: o.status.value for o in LocalProvider(skyform_home).observe()}
    assert states == {"cluster.a": "UP", "cluster.b": "STOPPED"}
    rows = json.loads(_cli("status", "--format", "json", "--repo", str(root))[1])
    assert {r["address"]: r["status"] for r in rows}["cluster.b"] == "STOPPED"
    b.write_text(REPO["clusters/b.yaml"])
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0, out
    states = {o.handle.address: o.status.value for o in LocalProvider(skyform_home).observe()}
    assert states == {"cluster.a": "UP", "cluster.b": "UP"}
    assert _cli("apply", str(root), "--yes")[1].count("No changes.") == 1


def _node_pgid(home: Path, address: str) -> int:
    for res in LocalProvider(home).observe():
        if res.handle.address == address:
            pid_file = home / "local" / res.handle.resource_id / "node-0" / "state" / "pid.json"
            return int(json.loads(pid_file.read_text())["pgid"])
    raise AssertionError(f"{address} not found")


def test_a_node_killed_outside_skyform_is_healed(tmp_path: Path, skyform_home: Path) -> None:
    root = write_repo(tmp_path / "repo", {k: v for k, v in REPO.items() if k != "clusters/c.yaml"})
    assert _cli("apply", str(root), "--yes")[0] == 0
    os.killpg(_node_pgid(skyform_home, "cluster.b"), signal.SIGKILL)
    time.sleep(0.5)
    code, out = _cli("plan", str(root), "--detailed-exitcode")
    assert code == 2 and "drift: a node was lost outside Skyform" in out
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0, out
    states = {o.handle.address: o.status.value for o in LocalProvider(skyform_home).observe()}
    assert states == {"cluster.a": "UP", "cluster.b": "UP"}
    assert _cli("plan", str(root), "--detailed-exitcode")[0] == 0


def test_a_job_whose_controller_died_is_rerun_without_leaking_its_node(
    tmp_path: Path, skyform_home: Path
) -> None:
    files = {
        "skyform.yaml": REPO["skyform.yaml"],
        "jobs/long.yaml": "resources: {cpus: 0.1, memory: 0.1}\nrun: sleep 60\n",
    }
    root = write_repo(tmp_path / "repo", files)
    assert _cli("apply", str(root), "--yes")[0] == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not LocalProvider(skyform_home).observe():
        time.sleep(0.2)
    [controller] = list((skyform_home / "controllers").iterdir())
    os.kill(json.loads((controller / "pid.json").read_text())["pid"], signal.SIGKILL)
    time.sleep(0.5)
    code, out = _cli("apply", str(root), "--yes")
    assert code == 0, out
    assert "drift: its controller stopped before the job finished" in out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = [o.handle.address for o in LocalProvider(skyform_home).observe()]
        if live == ["job.long"]:
            break
        time.sleep(0.2)
    assert live == ["job.long"], live
