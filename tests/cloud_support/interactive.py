"""`skyform exec`, `ssh`, `ssh-config` and `port-forward` on a cloud cluster, and autostop
counting that use: a two-node cluster launched by the cloud's provider against its fake, whose
instances all resolve to a private sshd on 127.0.0.1, reached through the `skyform` CLI as its
own process and through Debian's OpenSSH client with the generated config.

The test modules of both clouds (`tests/reconciler/interactive/test_{aws,gcp}_interactive.py`)
import these tests and `cloud_cluster` (`__all__`), and give them the cloud as
`interactive_world`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from applier.autostop import Stopped, enforce
from applier.interactive import for_provider
from applier.interactive_cloud import ROOT_ENV, USER_ENV
from applier.provider import Handle, LaunchRequest, ObservedResource, ResourceKind, ResourceStatus
from applier.providers import local_files as files
from applier.providers import ssh
from schema.errors import ProviderError
from schema.loader import load_tasks
from state import Resource, open_store
from tests.aws_support import sshd as sshd_support
from tests.cloud_support.worlds import World
from tests.reconciler.interactive.conftest import Cluster, port_forward, round_trip

__all__ = [
    "cloud_cluster",
    "test_a_stopped_cluster_is_a_provider_error",
    "test_connect_to_a_closed_port_is_a_provider_error",
    "test_exec_on_all_nodes_prefixes_output_and_returns_the_first_failure",
    "test_exec_runs_in_the_workdir_with_skypilot_variables_and_returns_the_exit_code",
    "test_interactive_use_keeps_an_idle_cluster_from_autostop",
    "test_port_forward_relays_bytes_to_a_port_on_the_instance",
    "test_ssh_reads_a_shell_from_stdin_and_marks_every_instance_active",
    "test_the_ssh_config_host_block_works_with_openssh",
]

TIMEOUT_S = 60
AUTOSTOP_MINUTES = 10
TASK = (
    f"num_nodes: 2\nworkdir: src\nresources: {{autostop: {AUTOSTOP_MINUTES}}}\nrun: echo started\n"
)


@dataclass(frozen=True)
class CloudCluster:
    world: World
    home: Path
    handle: Handle
    provider: Any  # the world's provider

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`skyform` as its own process, in this process's environment (`cloud_cluster` points
        it at the fake cloud and the sshd) with SKYFORM_HOME, as for the local cluster."""
        return self._as_local().cli(*args, stdin=stdin)

    def env(self) -> dict[str, str]:
        return self._as_local().env()

    def _as_local(self) -> Cluster:
        return Cluster(home=self.home, repo=self.home)

    def workdir(self, rank: int) -> Path:
        resource = files.resource_dir_name(self.handle.address, self.handle.skyform_id)
        return self.world.nodes_root / resource / f"node-{rank}" / "home" / "sky_workdir"

    def observed(self) -> ObservedResource:
        [seen] = self.provider.observe()
        assert isinstance(seen, ObservedResource)
        return seen


def interactive_world_of(cls: type[World]) -> Any:
    """A cloud's test module's `interactive_world` fixture: its world for the module."""

    @pytest.fixture(scope="module", name="interactive_world")
    def world(
        request: pytest.FixtureRequest,
        sshd: sshd_support.Sshd,
        client_key: tuple[Path, str],
        tmp_path_factory: pytest.TempPathFactory,
    ) -> World:
        base = tmp_path_factory.mktemp(f"{cls.name}-interactive")
        return cls(request.getfixturevalue(cls.fake_fixture), client_key, sshd.address, base)

    return world


@pytest.fixture(scope="module")
def cloud_cluster(interactive_world: World) -> Iterator[CloudCluster]:
    """`cluster.x` (two nodes, autostop after AUTOSTOP_MINUTES), launched and in the state
    store of its Skyform home; the CLI reaches the cloud through the environment only."""
    world = interactive_world
    base = world.base
    home, src = world.home(base / "home"), base / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello from the workdir\n")
    with pytest.MonkeyPatch.context() as mp:
        world.enter(mp)
        env = {
            **world.env,
            "SKYFORM_HOME": str(home),
            ssh.OVERRIDE_ENV: world.node_settings["ssh_host_override"],
            USER_ENV: "root",
            ROOT_ENV: str(world.nodes_root),
        }
        for name, value in env.items():
            mp.setenv(name, value)
        provider = world.provider(home)
        task = load_tasks(TASK, "x.yaml").tasks[0].task
        kind, placement = ResourceKind.CLUSTER, world.placement
        request = LaunchRequest(
            "cluster.x", uuid.uuid4().hex, kind, task, placement, 2, base_dir=base
        )
        handle = provider.launch(request)
        try:
            with open_store(None, home) as store:
                store.put_resource(
                    Resource(
                        "cluster.x",
                        "cluster",
                        "h",
                        handles={"handle": handle.as_dict()},
                        status="up",
                    )
                )
            yield CloudCluster(world, home, handle, provider)
        finally:
            provider.terminate(handle)
            world.cleanup()


def test_exec_runs_in_the_workdir_with_skypilot_variables_and_returns_the_exit_code(
    cloud_cluster: CloudCluster,
) -> None:
    done = cloud_cluster.cli(
        "exec", "cluster.x", "--", "sh", "-c", "pwd; echo $SKYPILOT_NODE_RANK; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [str(cloud_cluster.workdir(0)), "0"]

    done = cloud_cluster.cli(
        "exec", "x", "--node", "1", "--", "echo $SKYPILOT_NODE_RANK; cat hello.txt"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", "hello from the workdir"]


def test_exec_on_all_nodes_prefixes_output_and_returns_the_first_failure(
    cloud_cluster: CloudCluster,
) -> None:
    rank = "$SKYPILOT_NODE_RANK"
    script = f"echo rank-{rank}/$SKYPILOT_NUM_NODES; echo err-{rank} >&2; exit $(({rank} * 5 + 2))"
    done = cloud_cluster.cli("exec", "cluster.x", "--all", "--", script)
    assert done.returncode == 2, done.stderr
    assert sorted(done.stdout.splitlines()) == ["(node-0) rank-0/2", "(node-1) rank-1/2"]
    assert sorted(done.stderr.splitlines()) == ["(node-0) err-0", "(node-1) err-1"]


def test_ssh_reads_a_shell_from_stdin_and_marks_every_instance_active(
    cloud_cluster: CloudCluster,
) -> None:
    world, handle = cloud_cluster.world, cloud_cluster.handle
    world.clear_activity(handle)
    assert world.activity(handle) == []
    done = cloud_cluster.cli(
        "ssh", "x", "--node", "1", stdin="echo $SKYPILOT_NODE_RANK; pwd; exit 4\n"
    )
    assert done.returncode == 4, done.stderr
    assert done.stdout.splitlines() == ["1", str(cloud_cluster.workdir(1))]
    stamps = world.activity(handle)
    assert len(stamps) == 2 and all(s.isdigit() for s in stamps)  # every instance
    assert all("skyform-id" in marks for marks in world.marks(handle))  # the others are kept


def test_interactive_use_keeps_an_idle_cluster_from_autostop(cloud_cluster: CloudCluster) -> None:
    """Launched an hour ago with autostop after 10 minutes: autostop counts from the last
    `skyform exec` (the CLI's touch), not from the launch, and stops the cluster once that is
    10 minutes old too."""
    world, handle, provider = cloud_cluster.world, cloud_cluster.handle, cloud_cluster.provider
    world.age(handle, 3600)
    world.clear_activity(handle)
    idle = cloud_cluster.observed()
    assert (idle.autostop_minutes, idle.autostop_down) == (AUTOSTOP_MINUTES, False)
    assert idle.last_active == idle.launched_at < time.time() - 3500

    touched = int(time.time())
    done = cloud_cluster.cli("exec", "x", "--", "true")
    assert done.returncode == 0, done.stderr
    seen = cloud_cluster.observed()
    assert seen.last_active >= touched > seen.launched_at + 3500
    providers = {world.name: provider}
    try:
        within = seen.last_active + (AUTOSTOP_MINUTES - 1) * 60  # past launch + autostop
        assert within > seen.launched_at + AUTOSTOP_MINUTES * 60
        assert enforce(providers, within) == []
        assert cloud_cluster.observed().status == ResourceStatus.UP

        past = seen.last_active + (AUTOSTOP_MINUTES + 1) * 60
        assert enforce(providers, past) == [Stopped("cluster.x", False, AUTOSTOP_MINUTES + 1.0)]
        assert cloud_cluster.observed().status == ResourceStatus.STOPPED
    finally:
        provider.start(handle)  # for the module's other tests
    assert cloud_cluster.observed().last_active >= touched  # a start is activity too


def test_the_ssh_config_host_block_works_with_openssh(cloud_cluster: CloudCluster) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("Debian's openssh-client is not installed")
    done = cloud_cluster.cli("ssh-config")
    assert done.returncode == 0, done.stderr
    config = cloud_cluster.home / "ssh" / "config"
    text = config.read_text()
    assert "Host x\n" in text and "Host x-worker1\n" in text and "ProxyCommand" not in text
    ran = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "x-worker1", "echo via-openssh; exit 5"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert ran.returncode == 5, ran.stderr
    assert ran.stdout == "via-openssh\n"


def test_port_forward_relays_bytes_to_a_port_on_the_instance(
    cloud_cluster: CloudCluster, echo_server: int
) -> None:
    with port_forward(cloud_cluster.env(), "x", echo_server) as local:
        for payload in (b"ping", b"x" * 200_000):
            assert round_trip(local, payload) == payload


def test_connect_to_a_closed_port_is_a_provider_error(cloud_cluster: CloudCluster) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    iact = for_provider(cloud_cluster.world.name, cloud_cluster.home)
    with pytest.raises(ProviderError, match=f"nothing answers on port {closed}"):
        iact.connect(cloud_cluster.handle, 0, closed)


def test_a_stopped_cluster_is_a_provider_error(cloud_cluster: CloudCluster) -> None:
    world, handle = cloud_cluster.world, cloud_cluster.handle
    iact = for_provider(world.name, cloud_cluster.home)
    world.stop_node(handle, 1)
    try:
        with pytest.raises(ProviderError, match="is not running"):
            iact.touch(handle)
    finally:
        world.stop_node(handle, 1, stopped=False)
