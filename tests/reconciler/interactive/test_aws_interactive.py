"""`skyform exec`, `ssh`, `ssh-config` and `port-forward` on an AWS cluster: a two-node cluster
launched by the AWS provider against the fake EC2, whose instances all resolve to a private
sshd on 127.0.0.1 (`tests/aws_support`), reached through the `skyform` CLI as its own process
and through Debian's OpenSSH client with the generated config."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from applier.interactive import for_provider
from applier.interactive_aws import ACTIVITY_TAG
from applier.interactive_cloud import ROOT_ENV, USER_ENV
from applier.provider import Handle, LaunchRequest, Placement, ResourceKind
from applier.providers import local_files as files
from applier.providers import ssh
from applier.providers.aws import AwsProvider
from schema.errors import ProviderError
from schema.loader import load_tasks
from state import Resource, open_store
from tests.applier.aws.conftest import IMAGE, client_key, fake_ec2, sshd  # noqa: F401
from tests.aws_support import sshd as sshd_support
from tests.aws_support.fake_ec2 import FakeEc2
from tests.reconciler.interactive.test_ssh_exec import _first_line

TIMEOUT_S = 60
TASK = "num_nodes: 2\nworkdir: src\nrun: echo started\n"
EAST = Placement("aws", "us-east-1", None, "m6i.large", cpus=2.0, memory_gib=8.0)


@dataclass(frozen=True)
class AwsCluster:
    home: Path
    handle: Handle
    env: dict[str, str]
    nodes_root: Path

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


@pytest.fixture(scope="module")
def aws_cluster(
    fake_ec2: FakeEc2,  # noqa: F811
    sshd: sshd_support.Sshd,  # noqa: F811
    client_key: tuple[Path, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AwsCluster]:
    base = tmp_path_factory.mktemp("aws-interactive")
    home, nodes_root, src = base / "home", base / "nodes", base / "src"
    (home / "ssh").mkdir(parents=True)
    for key in (client_key[0], client_key[0].with_name(client_key[0].name + ".pub")):
        shutil.copy2(key, home / "ssh" / key.name)
    src.mkdir()
    (src / "hello.txt").write_text("hello from the workdir\n")
    fake_ec2.reset()
    env = {
        "AWS_ENDPOINT_URL": fake_ec2.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "SKYFORM_HOME": str(home),
        ssh.OVERRIDE_ENV: sshd.address,
        USER_ENV: "root",
        ROOT_ENV: str(nodes_root),
    }
    settings = {"image_id": IMAGE, "poll_s": 0.05, "boot_timeout_s": 20, "ssh_timeout_s": 20}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        provider = AwsProvider(
            home, {**settings, "ssh_user": "root", "remote_root": str(nodes_root)}
        )
        task = load_tasks(TASK, "x.yaml").tasks[0].task
        request = LaunchRequest(
            "cluster.x", uuid.uuid4().hex, ResourceKind.CLUSTER, task, EAST, 2, base_dir=base
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
            yield AwsCluster(home, handle, {**os.environ}, nodes_root)
        finally:
            provider.terminate(handle)
            sshd_support.kill_node_processes(nodes_root)


def activity_tags(handle: Handle) -> list[str]:
    """The activity tag of each instance that has one (boto3 reads the fake's endpoint from
    the environment)."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    found = ec2.describe_instances(InstanceIds=handle.resource_id.split(","))["Reservations"]
    tags = [t for r in found for i in r["Instances"] for t in i.get("Tags", [])]
    return [t["Value"] for t in tags if t["Key"] == ACTIVITY_TAG]


def clear_activity(handle: Handle) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.delete_tags(Resources=handle.resource_id.split(","), Tags=[{"Key": ACTIVITY_TAG}])


def test_exec_runs_in_the_workdir_with_skypilot_variables_and_returns_the_exit_code(
    aws_cluster: AwsCluster,
) -> None:
    done = aws_cluster.cli(
        "exec", "cluster.x", "--", "sh", "-c", "pwd; echo $SKYPILOT_NODE_RANK; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [str(aws_cluster.workdir(0)), "0"]

    done = aws_cluster.cli(
        "exec", "x", "--node", "1", "--", "echo $SKYPILOT_NODE_RANK; cat hello.txt"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", "hello from the workdir"]


def test_exec_on_all_nodes_prefixes_output_and_returns_the_first_failure(
    aws_cluster: AwsCluster,
) -> None:
    rank = "$SKYPILOT_NODE_RANK"
    script = f"echo rank-{rank}/$SKYPILOT_NUM_NODES; echo err-{rank} >&2; exit $(({rank} * 5 + 2))"
    done = aws_cluster.cli("exec", "cluster.x", "--all", "--", script)
    assert done.returncode == 2, done.stderr
    assert sorted(done.stdout.splitlines()) == ["(node-0) rank-0/2", "(node-1) rank-1/2"]
    assert sorted(done.stderr.splitlines()) == ["(node-0) err-0", "(node-1) err-1"]


def test_ssh_reads_a_shell_from_stdin_and_records_activity(aws_cluster: AwsCluster) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in aws_cluster.env.items():
            mp.setenv(name, value)
        clear_activity(aws_cluster.handle)
        assert activity_tags(aws_cluster.handle) == []
        done = aws_cluster.cli(
            "ssh", "x", "--node", "1", stdin="echo $SKYPILOT_NODE_RANK; pwd; exit 4\n"
        )
        assert done.returncode == 4, done.stderr
        assert done.stdout.splitlines() == ["1", str(aws_cluster.workdir(1))]
        assert len(activity_tags(aws_cluster.handle)) == 2  # every instance: autostop's input


def test_the_ssh_config_host_block_works_with_openssh(aws_cluster: AwsCluster) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("Debian's openssh-client is not installed")
    done = aws_cluster.cli("ssh-config")
    assert done.returncode == 0, done.stderr
    config = aws_cluster.home / "ssh" / "config"
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


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on a loopback port of the "instance" (the test sshd's host)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(TIMEOUT_S)
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_port_forward_relays_bytes_to_a_port_on_the_instance(
    aws_cluster: AwsCluster, echo_server: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "port-forward", "x", f"0:{echo_server}"],
        env=aws_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        assert line.startswith("Forwarding 127.0.0.1:"), line
        local = int(line.split("127.0.0.1:")[1].split()[0])
        for payload in (b"ping", b"x" * 200_000):
            with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT_S) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
            assert received == payload
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT_S) == 0


def test_connect_to_a_closed_port_is_a_provider_error(aws_cluster: AwsCluster) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in aws_cluster.env.items():
            mp.setenv(name, value)
        iact = for_provider("aws", aws_cluster.home)
        with pytest.raises(ProviderError, match=f"nothing answers on port {closed}"):
            iact.connect(aws_cluster.handle, 0, closed)
