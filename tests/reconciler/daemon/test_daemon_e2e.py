"""The daemon as a user runs it: a real process following a real git remote on disk, applying
on the local provider; broken commits, force-pushes, drift and a crash mid-apply."""

from __future__ import annotations

import signal
from pathlib import Path

from applier.provider import Handle
from applier.providers.local import LocalProvider
from state import open_store
from tests.reconciler.daemon._support import (
    Remote,
    cluster,
    config,
    live,
    metric,
    running,
    start_daemon,
    wait_for,
)

BROKEN = "name: box\nresources: {infra: local, cpus: 0.1, memory: 0.1\nrun: sleep 600\n"


def _applied(daemon_status: dict[str, object], commit: str) -> bool:
    return daemon_status.get("last_applied_commit") == commit


def test_commits_are_applied_broken_ones_refused_force_pushes_followed(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    first = remote.commit({"skyform.yaml": config(), "clusters/box.yaml": cluster("box")})
    with running(remote.url, skyform_home, tmp_path / "d.log") as d:
        wait_for("the first commit to apply", lambda: _applied(d.status(), first))
        assert list(live(skyform_home)) == ["cluster.box"]

        # A new commit is applied by the poll (the drift timer is an hour away).
        second = remote.commit({"clusters/gpu.yaml": cluster("gpu")})
        wait_for("the second commit to apply", lambda: _applied(d.status(), second))
        last = d.status()["last_sync"]
        assert last["trigger"] == "poll" and last["outcome"] == "applied"
        before = live(skyform_home)
        assert sorted(before) == ["cluster.box", "cluster.gpu"]

        # Broken YAML: reported and exported; nothing is deleted although box.yaml "vanished"
        # and prune is on.
        bad = remote.commit({"clusters/box.yaml": BROKEN}, "broken")
        status = wait_for(
            "the broken commit to be reported",
            lambda: (s := d.status())["invalid_commit"] and s,
        )
        assert status["invalid_commit"]["commit"] == bad
        assert "box.yaml" in status["invalid_commit"]["error"]
        assert status["last_sync"]["outcome"] == "invalid-commit"
        text = d.metrics()
        assert metric(text, "skyform_invalid_commit_errors_total") == 1
        assert metric(text, "skyform_head_commit_invalid") == 1
        assert live(skyform_home) == before
        assert status["last_applied_commit"] == second

        # A force-push that rewrites the bad commit away is followed, and the error clears.
        remote.repo.git.reset("--hard", second)
        fixed = remote.commit({"clusters/gpu.yaml": None}, "drop gpu, rewritten history")
        wait_for("the rewritten head to apply", lambda: _applied(d.status(), fixed))
        assert metric(d.metrics(), "skyform_head_commit_invalid") == 0
        assert live(skyform_home)["cluster.box"] == before["cluster.box"]
        assert "cluster.gpu" not in live(skyform_home)
    page_lines = [x for x in d.logs() if x["msg"] == "create complete"]
    assert page_lines and all(x["commit"] and x["plan_id"] and x["address"] for x in page_lines)
    assert all({"commit", "plan_id", "address"} <= set(x) for x in d.logs())


def _terminate_outside(home: Path, address: str) -> None:
    """What `sky down` or a console click does behind Skyform's back."""
    provider = LocalProvider(home, grace_s=0.5)
    for o in provider.observe():
        if o.handle.address == address:
            provider.terminate(Handle.from_dict(o.handle.as_dict()))


def test_drift_is_reported_without_self_heal_and_healed_with_it(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    first = remote.commit(
        {"skyform.yaml": config(drift="1s", self_heal=False), "clusters/box.yaml": cluster("box")}
    )
    with running(remote.url, skyform_home, tmp_path / "d.log") as d:
        wait_for("the first commit to apply", lambda: _applied(d.status(), first))
        _terminate_outside(skyform_home, "cluster.box")

        def reported() -> bool:
            drift = (d.status()["last_sync"] or {}).get("drift") or []
            return any(x["address"] == "cluster.box" for x in drift)

        wait_for("the drift to be reported", reported)
        assert "cluster.box" not in live(skyform_home)  # self_heal off: only reported
        assert metric(d.metrics(), "skyform_drift_healed_total") == 0

        heal = remote.commit({"skyform.yaml": config(drift="1s", self_heal=True)})
        wait_for("the self-heal commit to apply", lambda: _applied(d.status(), heal))
        wait_for("the cluster to be back", lambda: "cluster.box" in live(skyform_home))
        assert len(live(skyform_home)["cluster.box"]) == 1

        # Once healed, drift is healed again by the timer alone, within one drift interval.
        _terminate_outside(skyform_home, "cluster.box")
        wait_for("the timer to heal it", lambda: "cluster.box" in live(skyform_home))
        wait_for("healed twice", lambda: metric(d.metrics(), "skyform_drift_healed_total") >= 2)
        assert d.status()["resources"][0]["status"] == "UP"


def test_a_daemon_killed_mid_apply_resumes_from_the_journal(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    files = {"skyform.yaml": config()}
    # Setup takes seconds, so the kill lands while the launches are in flight.
    files.update({f"clusters/c{i}.yaml": cluster(f"c{i}", setup="sleep 3") for i in range(3)})
    commit = remote.commit(files)
    d = start_daemon(remote.url, skyform_home, tmp_path / "d1.log", "--parallelism", "1")

    def in_flight() -> bool:
        with open_store(None, skyform_home) as store:
            return bool(store.incomplete_intents()) and bool(live(skyform_home))

    try:
        wait_for("an apply to be in flight", in_flight)
    finally:
        d.kill(signal.SIGKILL)
    assert in_flight(), "the kill must land mid-apply for this test to mean anything"
    with running(remote.url, skyform_home, tmp_path / "d2.log") as d2:
        wait_for("the restarted daemon to finish", lambda: d2.status()["last_applied_commit"])
        assert d2.status()["last_applied_commit"] == commit
        notes = [x["msg"] for x in d2.logs() if x["msg"].startswith("journal:")]
        assert any("adopted" in n for n in notes), notes
    seen = live(skyform_home)
    assert sorted(seen) == ["cluster.c0", "cluster.c1", "cluster.c2"]
    assert all(len(ids) == 1 for ids in seen.values()), seen  # no duplicates
    with open_store(None, skyform_home) as store:
        assert not store.incomplete_intents()
        records = {r.address: r.handles["skyform_id"] for r in store.list_resources()}
    assert records == {a: ids[0] for a, ids in seen.items()}
