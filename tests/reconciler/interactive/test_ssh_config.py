"""Skyform's SSH config: a real OpenSSH client (and rsync) reaches local nodes by the cluster's
name through the `skyform ssh-proxy` ProxyCommand (a per-connection `sshd -i`); `--install`
adds the Include line only when asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from applier.interactive_ssh import write_ssh_config
from applier.provider import Handle, Placement, ResourceKind
from schema.errors import ProviderError
from state import Resource
from tests.reconciler.interactive.conftest import CLI_TIMEOUT_S, Cluster


def _has_sshd() -> bool:
    from applier.interactive_ssh import sshd_path

    try:
        sshd_path()
    except ProviderError:
        return False
    return shutil.which("ssh") is not None


needs_openssh = pytest.mark.skipif(
    not _has_sshd(), reason="OpenSSH (sshd and ssh) is not installed: run scripts/ensure-sshd.sh"
)


def _ssh(cluster: Cluster, host: str, command: str) -> subprocess.CompletedProcess[str]:
    config = cluster.home / "ssh" / "config"
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", host, "--", command],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=cluster.env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@needs_openssh
def test_openssh_reaches_each_node_by_name_through_the_proxy(cluster: Cluster) -> None:
    done = cluster.cli("ssh-config")
    assert done.returncode == 0, done.stderr
    config = (cluster.home / "ssh" / "config").read_text()
    assert "Host x\n" in config and "Host x-worker1\n" in config
    before = cluster.last_active()
    head = _ssh(cluster, "x", "echo hi; pwd; echo $HOME $SKYPILOT_NODE_RANK")
    assert head.returncode == 0, head.stderr
    home = cluster.node_dir(0) / "home"
    assert head.stdout.splitlines() == ["hi", str(cluster.workdir(0)), f"{home} 0"]
    assert cluster.last_active() > before  # an SSH session is activity for autostop
    worker = _ssh(cluster, "x-worker1", "echo $SKYPILOT_NODE_RANK; cat hello.txt; exit 3")
    assert worker.returncode == 3, worker.stderr
    assert worker.stdout.splitlines() == ["1", "hello from the workdir"]
    assert not list((cluster.home / "ssh" / "run").iterdir())  # each proxy cleaned up after itself


@needs_openssh
@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_copies_into_a_node_through_the_proxy(cluster: Cluster, tmp_path: Path) -> None:
    assert cluster.cli("ssh-config").returncode == 0
    source = tmp_path / "data"
    source.mkdir()
    (source / "weights.bin").write_bytes(bytes(range(256)) * 100)
    ssh = f"ssh -F {cluster.home / 'ssh' / 'config'} -o BatchMode=yes"
    done = subprocess.run(
        ["rsync", "-a", "-e", ssh, f"{source}/", "x-worker1:synced/"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    copied = cluster.workdir(1) / "synced" / "weights.bin"
    assert copied.read_bytes() == (source / "weights.bin").read_bytes()


def test_proxy_to_an_unknown_cluster_says_how_to_fix_it(cluster: Cluster) -> None:
    done = cluster.cli("ssh-proxy", "cluster.nope", "--home", str(cluster.home))
    assert done.returncode == 1
    assert "run `skyform ssh-config`" in done.stderr


def test_install_adds_the_include_line_once_and_only_when_asked(
    cluster: Cluster, tmp_path: Path
) -> None:
    user_home = tmp_path / "user"
    user_config = user_home / ".ssh" / "config"
    user_config.parent.mkdir(parents=True)
    user_config.write_text("Host mine\n  HostName example.internal\n")
    env = {**cluster.env(), "HOME": str(user_home)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "reconciler.cli", *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT_S, check=False
        )

    line = f"Include {cluster.home / 'ssh' / 'config'}"
    shown = run("ssh-config")
    assert shown.returncode == 0 and line in shown.stdout
    assert user_config.read_text() == "Host mine\n  HostName example.internal\n"
    for _ in range(2):
        assert run("ssh-config", "--install").returncode == 0
    assert user_config.read_text() == f"{line}\n\nHost mine\n  HostName example.internal\n"


def test_clusters_without_a_way_in_get_a_comment_not_a_host(tmp_path: Path) -> None:
    def record(address: str, kind: str, provider: str) -> Resource:
        handle = Handle(
            provider=provider,
            address=address,
            skyform_id="0123456789abcdef",
            kind=ResourceKind.CLUSTER,
            placement=Placement(cloud=provider),
            num_nodes=1,
            resource_id="r",
            task_id="t",
        )
        return Resource(address, kind, "h", handles={"handle": handle.as_dict()})

    records = [record("cluster.pods", "cluster", "lambda"), record("job.j", "job", "local")]
    text = write_ssh_config(tmp_path, records).read_text()
    assert "# cluster.pods: Skyform cannot connect to lambda clusters yet" in text
    assert "\nHost " not in text


def test_an_existing_client_key_is_kept_and_authorized(tmp_path: Path) -> None:
    # The cloud providers share <home>/ssh/id_ed25519; instances may already trust it.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from applier.interactive_ssh import ensure_keys

    key = Ed25519PrivateKey.generate()
    (tmp_path / "ssh").mkdir()
    private = tmp_path / "ssh" / "id_ed25519"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    before = private.read_bytes()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    keys = ensure_keys(tmp_path)
    assert private.read_bytes() == before
    assert keys.authorized_keys.read_text() == public.decode() + "\n"
    assert (tmp_path / "ssh" / "id_ed25519.pub").read_text().startswith(public.decode())


def test_one_key_maker_for_clouds_and_openssh_even_when_racing(tmp_path: Path) -> None:
    """`ssh.ensure_key` (the cloud providers' launches) and `ensure_keys` (ssh config, proxies)
    make and share one client key: racing threads (each takes the lock as a process does) end
    with one key, its `.pub` and authorized_keys agreeing with it, and no temporary file."""
    from concurrent.futures import ThreadPoolExecutor

    from applier.interactive_ssh import ensure_keys
    from applier.providers import ssh

    def make(i: int) -> str:
        if i % 2:
            return ssh.ensure_key(tmp_path)[1]
        keys = ensure_keys(tmp_path)
        return keys.authorized_keys.read_text().strip() + " skyform"

    with ThreadPoolExecutor(8) as pool:
        lines = set(pool.map(make, range(16)))
    directory = tmp_path / "ssh"
    (line,) = lines
    assert line.startswith("ssh-ed25519 ") and line.endswith(" skyform")
    assert (directory / "id_ed25519.pub").read_text() == line + "\n"
    assert (directory / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (directory / "host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".") and p.name != ".lock"]
