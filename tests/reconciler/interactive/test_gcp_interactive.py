"""`skyform exec`, `ssh`, `ssh-config` and `port-forward` on a GCP cluster: a two-node cluster
launched by the GCP provider against the fake GCE, whose instances all resolve to a private
sshd on 127.0.0.1 (`tests/gcp_support`, `tests/aws_support/sshd.py`), reached through the
`skyform` CLI as its own process and through Debian's OpenSSH client with the generated config."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from applier.interactive import for_provider
from applier.interactive_cloud import ROOT_ENV, USER_ENV
from applier.interactive_gcp import ACTIVITY_LABEL
from applier.provider import Handle, LaunchRequest, Placement, ResourceKind
from applier.providers import gcp_compute, ssh
from applier.providers import local_files as files
from applier.providers.gcp import GcpProvider
from schema.errors import ProviderError
from schema.loader import load_tasks
from state import Resource, open_store
from tests.applier.gcp.conftest import PROJECT, fake_gce, gcp_client_key, gcp_sshd  # noqa: F401
from tests.aws_support import sshd as sshd_support
from tests.gcp_support.fake_gce import FakeGce
from tests.reconciler.interactive.test_aws_interactive import echo_server  # noqa: F401
from tests.reconciler.interactive.test_ssh_exec import _first_line

TIMEOUT_S = 60
TASK = "num_nodes: 2\nworkdir: src\nrun: echo started\n"
CENTRAL = Placement(
    "gcp", "us-central1", "us-central1-a", "n2-standard-2", cpus=2.0, memory_gib=8.0
)


@dataclass(frozen=True)
class GcpCluster:
    home: Path
    handle: Handle
    env: dict[str, str]
    nodes_root: Path
    fake: FakeGce

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=TIMEOUT_S,
            check=False,
        )

    def workdir(self, rank: int) -> Path:
        resource = files.resource_dir_name(self.handle.address, self.handle.skyform_id)
        return self.nodes_root / resource / f"node-{rank}" / "home" / "sky_workdir"

    def activity_labels(self) -> list[str]:
        return [
            i["labels"][ACTIVITY_LABEL]
            for i in self.fake.live()
            if ACTIVITY_LABEL in (i.get("labels") or {})
        ]


@pytest.fixture(scope="module")
def gcp_cluster(
    fake_gce: FakeGce,  # noqa: F811
    gcp_sshd: sshd_support.Sshd,  # noqa: F811
    gcp_client_key: tuple[Path, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GcpCluster]:
    base = tmp_path_factory.mktemp("gcp-interactive")
    home, nodes_root, src = base / "home", base / "nodes", base / "src"
    (home / "ssh").mkdir(parents=True)
    key = gcp_client_key[0]
    for path in (key, key.with_name(key.name + ".pub")):
        shutil.copy2(path, home / "ssh" / path.name)
    src.mkdir()
    (src / "hello.txt").write_text("hello from the workdir\n")
    fake_gce.reset()
    env = {
        gcp_compute.ENDPOINT_ENV: fake_gce.endpoint,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "SKYFORM_HOME": str(home),
        ssh.OVERRIDE_ENV: gcp_sshd.address,
        USER_ENV: "root",
        ROOT_ENV: str(nodes_root),
    }
    settings = {"poll_s": 0.05, "boot_timeout_s": 20, "ssh_timeout_s": 20}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        provider = GcpProvider(
            home, {**settings, "ssh_user": "root", "remote_root": str(nodes_root)}
        )
        task = load_tasks(TASK, "x.yaml").tasks[0].task
        request = LaunchRequest(
            "cluster.x", uuid.uuid4().hex, ResourceKind.CLUSTER, task, CENTRAL, 2, base_dir=base
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
            yield GcpCluster(home, handle, {**os.environ}, nodes_root, fake_gce)
        finally:
            provider.terminate(handle)
            sshd_support.kill_node_processes(nodes_root)


def test_exec_runs_in_the_workdir_with_skypilot_variables_and_returns_the_exit_code(
    gcp_cluster: GcpCluster,
) -> None:
    done = gcp_cluster.cli(
        "exec", "cluster.x", "--", "sh", "-c", "pwd; echo $SKYPILOT_NODE_RANK; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [str(gcp_cluster.workdir(0)), "0"]

    done = gcp_cluster.cli(
        "exec", "x", "--node", "1", "--", "echo $SKYPILOT_NODE_RANK; cat hello.txt"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", "hello from the workdir"]


def test_exec_on_all_nodes_prefixes_output_and_returns_the_first_failure(
    gcp_cluster: GcpCluster,
) -> None:
    rank = "$SKYPILOT_NODE_RANK"
    script = f"echo rank-{rank}/$SKYPILOT_NUM_NODES; echo err-{rank} >&2; exit $(({rank} * 5 + 2))"
    done = gcp_cluster.cli("exec", "cluster.x", "--all", "--", script)
    assert done.returncode == 2, done.stderr
    assert sorted(done.stdout.splitlines()) == ["(node-0) rank-0/2", "(node-1) rank-1/2"]
    assert sorted(done.stderr.splitlines()) == ["(node-0) err-0", "(node-1) err-1"]


def test_ssh_reads_a_shell_from_stdin_and_labels_every_instance_active(
    gcp_cluster: GcpCluster,
) -> None:
    before = len(gcp_cluster.activity_labels())
    done = gcp_cluster.cli(
        "ssh", "x", "--node", "1", stdin="echo $SKYPILOT_NODE_RANK; pwd; exit 4\n"
    )
    assert done.returncode == 4, done.stderr
    assert done.stdout.splitlines() == ["1", str(gcp_cluster.workdir(1))]
    labels = gcp_cluster.activity_labels()
    assert len(labels) == 2 >= before  # every instance: autostop's input
    assert all(label.isdigit() for label in labels)
    survivors = [i["labels"] for i in gcp_cluster.fake.live()]
    assert all("skyform-id" in labels for labels in survivors)  # the other labels are kept


def test_the_ssh_config_host_block_works_with_openssh(gcp_cluster: GcpCluster) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("Debian's openssh-client is not installed")
    done = gcp_cluster.cli("ssh-config")
    assert done.returncode == 0, done.stderr
    config = gcp_cluster.home / "ssh" / "config"
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
    gcp_cluster: GcpCluster,
    echo_server: int,  # noqa: F811
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "port-forward", "x", f"0:{echo_server}"],
        env=gcp_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        assert line.startswith("Forwarding 127.0.0.1:"), line
        local = int(line.split("127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT_S) as conn:
            conn.sendall(b"ping")
            conn.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received == b"ping"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT_S) == 0


def test_a_stopped_cluster_is_a_provider_error(gcp_cluster: GcpCluster) -> None:
    zone, _, name = gcp_cluster.handle.resource_id.split(",")[1].partition("/")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in gcp_cluster.env.items():
            mp.setenv(key, value)
        iact = for_provider("gcp", gcp_cluster.home)
        gcp_cluster.fake.preempt(zone, name)
        try:
            with pytest.raises(ProviderError, match="is not running"):
                iact.touch(gcp_cluster.handle)
        finally:
            with gcp_cluster.fake.state.lock:
                gcp_cluster.fake.state.instances[(zone, name)]["status"] = "RUNNING"
