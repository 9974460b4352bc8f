"""The GCP provider's test world: the stdlib fake GCE on 127.0.0.1 for the whole session, reset
per test; an sshd on 127.0.0.1 standing in for every instance; real google-cloud-compute (with
anonymous credentials at the override endpoint) and paramiko."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.providers import gcp_compute, ssh
from applier.providers.gcp import GcpProvider
from tests.aws_support import sshd as sshd_support
from tests.gcp_support.fake_gce import FakeGce

PROJECT = "skyform-test"


@pytest.fixture(scope="session")
def fake_gce() -> Iterator[FakeGce]:
    server = FakeGce().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcp_client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One client key for the session, copied into every test's Skyform home."""
    return ssh.ensure_key(tmp_path_factory.mktemp("gcp-key-home"))


@pytest.fixture(scope="session")
def gcp_sshd(
    tmp_path_factory: pytest.TempPathFactory, gcp_client_key: tuple[Path, str]
) -> Iterator[sshd_support.Sshd]:
    why = sshd_support.available()
    if why:
        pytest.skip(why)
    server = sshd_support.Sshd(tmp_path_factory.mktemp("gcp-sshd"), gcp_client_key[1])
    yield server
    server.stop()


@pytest.fixture
def gce(fake_gce: FakeGce, monkeypatch: pytest.MonkeyPatch) -> FakeGce:
    """A clean fake GCE, with the provider pointed at it through its environment variables."""
    fake_gce.reset()
    monkeypatch.setenv(gcp_compute.ENDPOINT_ENV, fake_gce.endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.delenv(ssh.OVERRIDE_ENV, raising=False)
    return fake_gce


MakeGcp = Callable[..., GcpProvider]


@pytest.fixture
def node_settings(gcp_sshd: sshd_support.Sshd, tmp_path: Path) -> dict[str, Any]:
    """Provider settings that make every node the test sshd (usable for aws too)."""
    return {
        "ssh_user": "root",
        "ssh_host_override": gcp_sshd.address,
        "remote_root": str(tmp_path / "nodes"),
        "poll_s": 0.05,
        "boot_timeout_s": 20,
        "ssh_timeout_s": 20,
    }


@pytest.fixture
def make_gcp(
    gce: FakeGce,
    node_settings: dict[str, Any],
    gcp_client_key: tuple[Path, str],
    tmp_path: Path,
) -> Iterator[MakeGcp]:
    """Providers over the fake GCE whose nodes all resolve to the test sshd."""
    nodes_root = Path(node_settings["remote_root"])
    made: list[GcpProvider] = []

    def make(home: Path | None = None, **settings: Any) -> GcpProvider:
        home = home or tmp_path / f"home-{len(made)}"
        (home / "ssh").mkdir(parents=True, exist_ok=True)
        key = gcp_client_key[0]
        for src in (key, key.with_name(key.name + ".pub")):
            shutil.copy2(src, home / "ssh" / src.name)
        base = {**node_settings, "regions": ["us-central1"], "operation_timeout_s": 20}
        provider = GcpProvider(home, {**base, **settings})
        made.append(provider)
        return provider

    yield make
    sshd_support.kill_node_processes(nodes_root)
