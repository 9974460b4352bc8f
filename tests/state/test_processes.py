"""Real processes against one store, on every backend: lock races and kill -9 mid-write."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from state import Store, open_store

WORKERS = Path(__file__).with_name("_workers.py")
RACERS = 4
WINS_EACH = 25  # 100 lock acquisitions in all
KILLS = 50


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_racing_processes_never_hold_the_lock_together(store_url: str, tmp_path: Path) -> None:
    open_store(store_url, tmp_path).close()  # create the schema before the race starts
    log, go = tmp_path / "holders.log", tmp_path / "go"
    racers = [
        spawn("race", store_url, str(tmp_path), str(log), str(WINS_EACH), str(go))
        for _ in range(RACERS)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for racer in racers:
            out, err = racer.communicate(timeout=60)
            assert racer.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for racer in racers:
            racer.kill()
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * RACERS * WINS_EACH
    # O_APPEND writes are atomic, so two holders at once would interleave "+ a", "+ b".
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("+ ") and leave == "- " + enter[2:], (enter, leave)
    assert all(r["won"] == WINS_EACH for r in results)
    # Without contention this test would prove nothing.
    assert sum(r["refused"] for r in results) > 0


def test_processes_creating_a_store_at_once_agree_on_one_lineage(
    store_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    openers = [spawn("first-open", store_url, str(tmp_path), str(go)) for _ in range(RACERS)]
    try:
        for opener in openers:
            assert opener.stdout is not None and opener.stdout.readline().strip() == "ready"
        go.touch()
        outputs = []
        for opener in openers:
            out, err = opener.communicate(timeout=60)
            assert opener.returncode == 0, err
            outputs.append(out.strip())
    finally:
        for opener in openers:
            opener.kill()
    assert len(set(outputs)) == 1, outputs
    with open_store(store_url, tmp_path) as store:
        assert outputs[0] == f"{store.meta().lineage} {store.meta().schema_version}"


def check_whole(store: Store) -> int:
    """The state a killed writer left: one whole batch per serial, nothing torn."""
    sys.path.insert(0, str(WORKERS.parent))
    try:
        from _workers import BATCH, spec_hash  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    serial = store.meta().serial
    resources = store.list_resources()
    if serial == 0:
        assert resources == []
        return serial
    assert sorted(r.address for r in resources) == sorted(BATCH)
    for r in resources:
        assert r.spec["generation"] == serial, (r.address, r.spec["generation"], serial)
        assert r.spec_hash == spec_hash(r.spec)
        assert r.placement == r.handles == {"generation": serial}
        assert r.status == f"gen-{serial}"
    return serial


def wait_gone(pid: int) -> None:
    """SIGKILL is delivered asynchronously; wait until the process has really ended."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.001)
    raise AssertionError(f"writer {pid} survived SIGKILL")


class WriterServer:
    """Drives a `fork-writers` worker: fork a writer, wait for it, kill it."""

    def __init__(self, store_url: str, home: Path) -> None:
        self.process = spawn("fork-writers", store_url, str(home))
        self.seen: set[str] = set()
        self.pids: list[int] = []

    def _wait_for(self, line: str) -> None:
        # Parent and child share one pipe, so "pid N" and "ready N" come in either order.
        assert self.process.stdout is not None
        while line not in self.seen:
            got = self.process.stdout.readline()
            assert got, f"writer server ended: {self.process.stderr}"
            self.seen.add(got.strip())

    def fork(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("fork\n")
        self.process.stdin.flush()
        got = self.process.stdout.readline().strip()
        while not got.startswith("pid "):
            self.seen.add(got)
            got = self.process.stdout.readline().strip()
        self.pids.append(int(got.split()[1]))
        return self.pids[-1]

    def wait_ready(self, pid: int) -> None:
        self._wait_for(f"ready {pid}")

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()


@pytest.mark.slow
def test_kill_9_at_random_points_never_tears_the_state(store_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("SKYFORM_CRASH_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    server = WriterServer(store_url, tmp_path)
    last = 0
    try:
        for attempt in range(KILLS):
            pid = server.fork()
            if attempt % 5 == 0:
                # Right from start-up, so some kills land in the migration of a new store.
                time.sleep(rng.uniform(0, 0.05))
            else:
                server.wait_ready(pid)
                time.sleep(rng.uniform(0, 0.03))
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
            with open_store(store_url, tmp_path) as store:
                serial = check_whole(store)
            assert serial >= last, f"serial went back from {last} to {serial} (seed {seed})"
            last = serial
    finally:
        server.close()
    assert last > 0, "no writer ever committed: the kills proved nothing"
