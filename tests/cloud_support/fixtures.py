"""The fixtures of the AWS and GCP tests, imported by the conftests and modules that use them:
the fake clouds and one sshd for the whole session, and a clean `World` per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.providers import ssh
from tests.aws_support import sshd as sshd_support
from tests.aws_support.fake_ec2 import FakeEc2
from tests.cloud_support.worlds import AwsWorld, GcpWorld, World
from tests.gcp_support.fake_gce import FakeGce


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


@pytest.fixture(scope="session")
def fake_ec2() -> Iterator[FakeEc2]:
    server = FakeEc2().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gce() -> Iterator[FakeGce]:
    server = FakeGce().start()
    yield server
    server.stop()


def world_fixture(cls: type[World]) -> Any:
    """The function-scoped fixture of `cls`'s world, named after its cloud (`aws`, `gcp`): a
    clean fake with the SDK pointed at it, and providers whose nodes are the sshd."""

    @pytest.fixture(name=cls.name)
    def world(
        request: pytest.FixtureRequest,
        sshd: sshd_support.Sshd,
        client_key: tuple[Path, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[World]:
        made = cls(request.getfixturevalue(cls.fake_fixture), client_key, sshd.address, tmp_path)
        made.enter(monkeypatch)
        yield made
        made.cleanup()

    return world


aws = world_fixture(AwsWorld)
gcp = world_fixture(GcpWorld)
