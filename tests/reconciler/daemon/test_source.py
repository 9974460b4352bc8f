"""The git source on real repositories: pinned trees, force-pushes, unreachable remotes with
backoff (the daemon keeps its last good commit), and signed-commit verification with gpg."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from reconciler.source import Backoff, GitSource, SourceError, UntrustedCommitError, redact
from tests.reconciler.daemon._support import Remote, cluster, config, live, metric, wait_for


def test_trees_are_pinned_and_force_pushes_followed(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    one = remote.commit({"a.txt": "one"})
    source = GitSource(remote.url, "main", tmp_path / "cache")
    assert source.fetch() == one
    tree = source.checkout(one)
    two = remote.commit({"a.txt": "two"})
    assert source.fetch() == two
    assert (tree / "a.txt").read_text() == "one"  # the pinned tree never moves
    assert (source.checkout(two) / "a.txt").read_text() == "two"

    remote.repo.git.reset("--hard", one)
    rewritten = remote.commit({"a.txt": "rewritten"}, "force-pushed")
    assert source.fetch() == rewritten
    assert (source.checkout(rewritten) / "a.txt").read_text() == "rewritten"


def test_an_unreachable_remote_is_an_error_with_backoff(tmp_path: Path) -> None:
    source = GitSource("https://user:tok3n@127.0.0.1:9/x.git", "main", tmp_path / "cache")
    with pytest.raises(SourceError) as err:
        source.fetch()
    assert "tok3n" not in str(err.value) and "***" in str(err.value)
    assert redact("https://u:p@h/r.git") == "https://u:***@h/r.git"
    backoff = Backoff(base=1.0, cap=5.0)
    assert [backoff.failed(100.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not backoff.ready(104.0) and backoff.ready(105.0)
    backoff.succeeded()
    assert backoff.ready(0.0)


def test_the_daemon_keeps_the_last_good_commit_while_the_remote_is_gone(
    tmp_path: Path, skyform_home: Path
) -> None:
    remote = Remote(tmp_path)
    good = remote.commit({"skyform.yaml": config(poll="0.3s"), "clusters/box.yaml": cluster("box")})
    daemon = Daemon(Settings(repo=remote.url, home=skyform_home, lease_s=5.0))
    daemon.source.backoff.cap = 0.5  # retry quickly in the test
    daemon.start()
    try:
        wait_for("the first apply", lambda: daemon.status.get("last_applied_commit") == good)
        away = Path(remote.url).with_name("moved.git")
        os.rename(remote.url, away)
        wait_for("the fetch error", lambda: daemon.status.get("source_error"))
        assert metric(daemon.metrics.render().decode(), "skyform_source_errors_total") >= 1
        assert daemon.status.get("last_good_commit") == good
        assert list(live(skyform_home)) == ["cluster.box"]
        os.rename(away, remote.url)
        wait_for("recovery", lambda: daemon.status.get("source_error") is None)
    finally:
        daemon.stop()


def _gpg(home: Path, *args: str) -> str:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def _key(home: Path, name: str) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@t.invalid>", "ed25519")
    listing = _gpg(home, "--with-colons", "--fingerprint")
    return next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_only_commits_signed_by_a_trusted_key_pass(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    trusted_home, other_home = tmp_path / "gpg-trusted", tmp_path / "gpg-other"
    trusted = _key(trusted_home, "trusted")
    other = _key(other_home, "other")
    public = tmp_path / "trusted.asc"
    public.write_text(_gpg(trusted_home, "--armor", "--export", trusted))
    source = GitSource(remote.url, "main", tmp_path / "cache", trusted_keys=[public])

    def signed(home: Path, key: str, text: str) -> str:
        os.environ["GNUPGHOME"] = str(home)
        try:
            remote.work.joinpath("f.txt").write_text(text)
            remote.repo.git.add("-A")
            remote.repo.git.commit(f"-S{key}", "-m", text)
            remote.repo.git.push("origin", "HEAD:refs/heads/main")
        finally:
            del os.environ["GNUPGHOME"]
        return str(remote.repo.head.commit.hexsha)

    good = signed(trusted_home, trusted, "good")
    assert source.fetch() == good
    assert source.verify(good) == trusted
    bad = signed(other_home, other, "bad")
    source.fetch()
    with pytest.raises(UntrustedCommitError, match="not signed by a trusted key"):
        source.verify(bad)
    unsigned = remote.commit({"f.txt": "unsigned"})
    source.fetch()
    with pytest.raises(UntrustedCommitError):
        source.verify(unsigned)
