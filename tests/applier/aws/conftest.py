"""The AWS provider's test world: moto (with injected faults) on 127.0.0.1 for the whole session,
reset per test; an sshd on 127.0.0.1 standing in for every instance; real boto3 and paramiko."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.providers import ssh
from applier.providers.aws import AwsProvider
from tests.aws_support import sshd as sshd_support
from tests.aws_support.fake_ec2 import FakeEc2

IMAGE = "ami-0123456789abcdef0"  # moto does not validate images


@pytest.fixture(scope="session")
def fake_ec2() -> Iterator[FakeEc2]:
    server = FakeEc2().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One client key for the session, copied into every test's Skyform home."""
    return ssh.ensure_key(tmp_path_factory.mktemp("key-home"))


@pytest.fixture(scope="session")
def sshd(
    tmp_path_factory: pytest.TempPathFactory, client_key: tuple[Path, str]
) -> Iterator[sshd_support.Sshd]:
    why = sshd_support.available()
    if why:
        pytest.skip(why)
    server = sshd_support.Sshd(tmp_path_factory.mktemp("sshd"), client_key[1])
    yield server
    server.stop()


@pytest.fixture
def ec2(fake_ec2: FakeEc2, monkeypatch: pytest.MonkeyPatch) -> FakeEc2:
    """A clean fake EC2 with boto3 pointed at it through its ordinary environment variables."""
    fake_ec2.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_ec2.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv(ssh.OVERRIDE_ENV, raising=False)
    return fake_ec2


MakeAws = Callable[..., AwsProvider]


@pytest.fixture
def make_aws(
    ec2: FakeEc2,
    sshd: sshd_support.Sshd,
    client_key: tuple[Path, str],
    tmp_path: Path,
) -> Iterator[MakeAws]:
    """Providers over the fake EC2 whose nodes all resolve to the test sshd."""
    nodes_root = tmp_path / "nodes"
    made: list[AwsProvider] = []

    def make(home: Path | None = None, **settings: Any) -> AwsProvider:
        home = home or tmp_path / f"home-{len(made)}"
        (home / "ssh").mkdir(parents=True, exist_ok=True)
        for src in (client_key[0], client_key[0].with_name(client_key[0].name + ".pub")):
            shutil.copy2(src, home / "ssh" / src.name)
        base = {
            "regions": ["us-east-1"],
            "image_id": IMAGE,
            "ssh_user": "root",
            "ssh_host_override": sshd.address,
            "remote_root": str(nodes_root),
            "poll_s": 0.05,
            "boot_timeout_s": 20,
            "ssh_timeout_s": 20,
        }
        provider = AwsProvider(home, {**base, **settings})
        made.append(provider)
        return provider

    yield make
    sshd_support.kill_node_processes(nodes_root)
