"""The daemon's state store: --state, then $SKYFORM_STATE, then skyform.yaml's `state:` at the
branch head, then the default SQLite file under SKYFORM_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from applier.provider import FreeCapacity
from applier.providers.fake import FakeProvider
from reconciler.cli import main
from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from state import open_store
from tests.reconciler.daemon._support import Remote, cluster, config, live, wait_for


def _addresses(url: str | None, home: Path) -> list[str]:
    with open_store(url, home) as store:
        return sorted(r.address for r in store.list_resources())


@pytest.fixture(autouse=True)
def _no_state_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYFORM_STATE", raising=False)


def test_the_daemon_uses_the_store_skyform_yaml_names(tmp_path: Path, skyform_home: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-repo.db'}"
    remote = Remote(tmp_path)
    commit = remote.commit(
        {
            "skyform.yaml": config(poll="0.5s") + f"state: {url}\n",
            "clusters/box.yaml": cluster("box"),
        }
    )
    fake = FakeProvider("local", capacity=[FreeCapacity("local", "local", None, 64, 256)])
    daemon = Daemon(
        Settings(
            repo=remote.url,
            home=skyform_home,
            lease_s=2.0,
            providers_for=lambda desired: {"local": fake},
        )
    )
    daemon.start()
    try:
        wait_for("the commit to apply", lambda: daemon.status.get("last_applied_commit") == commit)
        # The lock the leader holds is in that store too: a replica elsewhere would see it.
        with open_store(url, skyform_home) as store:
            lock = store.current_lock()
            assert lock is not None and lock.holder == daemon.leadership.holder
    finally:
        daemon.stop()
    assert _addresses(url, skyform_home) == ["cluster.box"]
    assert _addresses(None, skyform_home) == []  # the default store was never written


def test_the_flag_wins_over_skyform_yaml(tmp_path: Path, skyform_home: Path) -> None:
    in_repo = f"sqlite:///{tmp_path / 'from-repo.db'}"
    flag = f"sqlite:///{tmp_path / 'from-flag.db'}"
    remote = Remote(tmp_path)
    remote.commit(
        {"skyform.yaml": config() + f"state: {in_repo}\n", "clusters/box.yaml": cluster("box")}
    )
    args = ["reconcile", "--repo", remote.url, "--once", "--state", flag]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert list(live(skyform_home)) == ["cluster.box"]
    assert _addresses(flag, skyform_home) == ["cluster.box"]
    assert _addresses(in_repo, skyform_home) == []


def test_once_reads_a_postgresql_store_from_skyform_yaml(
    tmp_path: Path, skyform_home: Path, pg_url: str
) -> None:
    remote = Remote(tmp_path)
    remote.commit(
        {"skyform.yaml": config() + f"state: {pg_url}\n", "clusters/box.yaml": cluster("box")}
    )
    result = CliRunner().invoke(main, ["reconcile", "--repo", remote.url, "--once"])
    assert result.exit_code == 0, result.output
    assert _addresses(pg_url, skyform_home) == ["cluster.box"]
    assert _addresses(None, skyform_home) == []
