"""`skyform reconcile --once`: one full sync under the store lock, then exit (CI, cron)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reconciler.cli import main
from state import open_store
from tests.reconciler.daemon._support import Remote, cluster, config, live


def test_once_applies_and_exits_and_refuses_while_the_state_is_locked(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    remote.commit({"skyform.yaml": config(), "clusters/box.yaml": cluster("box")})
    with open_store(None, skyform_home) as store:
        lock = store.acquire_lock("someone-else", "apply", ttl=60)
        result = CliRunner().invoke(main, ["reconcile", "--repo", remote.url, "--once"])
        assert result.exit_code == 1 and "someone-else" in result.output, result.output
        assert live(skyform_home) == {}
        store.release_lock(lock.lock_id)
    result = CliRunner().invoke(main, ["reconcile", "--repo", remote.url, "--once"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("applied: Plan: 1 to create")
    assert list(live(skyform_home)) == ["cluster.box"]
    result = CliRunner().invoke(main, ["reconcile", "--repo", remote.url, "--once"])
    assert result.exit_code == 0 and result.output.startswith("in-sync"), result.output
    with open_store(None, skyform_home) as store:
        assert store.current_lock() is None  # released on exit
