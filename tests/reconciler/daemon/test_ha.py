"""Two daemons, real processes, on one PostgreSQL store: the leader is killed again and again,
the standby takes over, and no two applies ever overlap (read back from the store's history)."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from state import HistoryEntry, open_store
from tests.reconciler.daemon._support import (
    DaemonProcess,
    Remote,
    cluster,
    config,
    live,
    spawn_daemon,
    wait_for,
)

LEASE = 3.0
ROUNDS = 20


def _leader_pid(url: str, home: Path) -> int | None:
    with open_store(url, home) as store:
        lock = store.current_lock()
    return lock.pid if lock is not None and lock.expires_at > time.time() else None


def _applied(url: str, home: Path, commit: str) -> bool:
    with open_store(url, home) as store:
        runs = store.history(limit=500)
    return any(r.commit == commit and r.outcome == "ok" for r in runs)


def _pid(run: HistoryEntry) -> int:
    return int(run.who.rsplit(":", 1)[1])


def _assert_never_two_at_once(runs: list[HistoryEntry], killed_at: dict[int, float]) -> None:
    """Every apply ends (or its process is killed) before the next one starts."""
    runs = sorted((r for r in runs if r.operation == "reconcile"), key=lambda r: r.started_at)
    for before, after in itertools.pairwise(runs):
        end = before.finished_at if before.finished_at is not None else killed_at[_pid(before)]
        assert end <= after.started_at, f"applies overlap: {before} and {after}"


@pytest.mark.postgres
def test_leader_killed_twenty_times_never_two_applies(
    tmp_path: Path, skyform_home: Path, pg_url: str
) -> None:
    remote = Remote(tmp_path)
    commit = remote.commit({"skyform.yaml": config(poll="0.3s"), "clusters/a.yaml": cluster("a")})
    args = ("--state", pg_url, "--lease", str(LEASE))
    n = 0

    def spawn() -> DaemonProcess:
        nonlocal n
        n += 1
        return spawn_daemon(remote.url, skyform_home, tmp_path / f"d{n}.log", *args)

    # One leader and two standbys: a replacement starts while the next round runs.
    daemons = {d.proc.pid: d for d in (spawn(), spawn(), spawn())}
    killed_at: dict[int, float] = {}
    try:
        wait_for("the first apply", lambda: _applied(pg_url, skyform_home, commit))
        for i in range(ROUNDS):
            _round(i, remote, pg_url, skyform_home, daemons, killed_at, spawn)
        _frozen_leader_steps_down(pg_url, skyform_home, daemons, killed_at)
    finally:
        for d in daemons.values():
            d.kill(signal.SIGTERM)
    with open_store(pg_url, skyform_home) as store:
        runs = store.history(limit=500)
    assert len([r for r in runs if r.operation == "reconcile"]) >= ROUNDS
    _assert_never_two_at_once(runs, killed_at)
    assert all(len(ids) == 1 for ids in live(skyform_home).values())


def _round(
    i: int,
    remote: Remote,
    url: str,
    home: Path,
    daemons: dict[int, DaemonProcess],
    killed_at: dict[int, float],
    spawn: Callable[[], DaemonProcess],
) -> None:
    leader = wait_for("a leader", lambda: _leader_pid(url, home))
    assert leader in daemons
    standbys = [d for pid, d in daemons.items() if pid != leader]
    wait_for("a standby to listen", lambda: any(d.listening() for d in standbys))
    # Alternate: kill right after a push (mid-sync) or once the push is applied.
    commit = remote.commit({"clusters/a.yaml": cluster("a", cpus=0.2 - 0.1 * (i % 2))})
    if i % 2:
        wait_for("the push to apply", lambda: _applied(url, home, commit))
    daemons.pop(leader).kill(signal.SIGKILL)
    killed_at[leader] = time.time()
    successor = wait_for(
        "the standby to lead",
        lambda: (p := _leader_pid(url, home)) and p != leader and p,
        timeout=LEASE + 10,
    )
    assert successor in daemons
    replacement = spawn()
    daemons[replacement.proc.pid] = replacement
    wait_for("the new leader to apply", lambda: _applied(url, home, commit))


def _frozen_leader_steps_down(
    url: str, home: Path, daemons: dict[int, DaemonProcess], killed_at: dict[int, float]
) -> None:
    """A leader frozen past its lease (same host, pid alive) loses to the lease expiry; when it
    wakes it must exit rather than act."""
    leader = wait_for("a leader", lambda: _leader_pid(url, home))
    frozen = daemons.pop(leader)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            "the lease to expire and the standby to lead",
            lambda: (p := _leader_pid(url, home)) and p != leader,
            timeout=LEASE + 10,
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert frozen.proc.wait(timeout=30) == 3
    killed_at[leader] = time.time()
