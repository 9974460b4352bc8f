"""`skyform ssh`, `exec`, `ssh-proxy` and `port-forward` on Kubernetes pods through the real
kubernetes client against the tests' fake API server (`tests/k8s_server`): a two-pod cluster
launched by the provider, whose exec subresource here runs the command as a real process on
this machine with the pod's environment (`tests.k8s_server.pod_exec`: stdin, stdout, stderr
and the exit status streamed as the v5 channel protocol carries them), and whose portforward
subresource (`tests/k8s_server/portforward_ws.py`) reaches a pod's port N at 127.0.0.1:N, so a
TCP echo server on the loopback stands in for a process in the pod.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.interactive import for_provider
from applier.interactive_kubernetes import ACTIVITY_ANNOTATION
from applier.provider import Handle, ResourceKind
from schema.errors import ProviderError, SkyformError
from state import Resource, open_store
from tests.applier.kubernetes.conftest import kube  # noqa: F401
from tests.k8s_server.harness import Kube, request
from tests.k8s_server.pod_exec import pod_home, processes_in
from tests.reconciler.interactive.conftest import cli_on_a_terminal, port_forward, run_cli

TIMEOUT_S = 30


@pytest.fixture
def cluster(kube: Kube, tmp_path: Path) -> Iterator[Handle]:  # noqa: F811
    """Two running pods; an exec runs `/bin/sh -c SCRIPT` here as a process, HOME a directory
    per pod with a sky_workdir in it, and the pod's own container environment (SkyPilot's
    variables)."""
    kube.a.cluster.exec_runner = processes_in(tmp_path / "pods")
    provider = kube.provider("ctx-a")
    yaml = "num_nodes: 2\nrun: sleep infinity\n"
    req = request(yaml, address="cluster.dev", kind=ResourceKind.CLUSTER, num_nodes=2)
    yield provider.launch(req)


def run(
    home: Path, handle: Handle, nodes: list[int], command: str
) -> tuple[list[int], dict[int, bytes]]:
    out: dict[int, bytes] = {}

    def sink(rank: int, fd: int, chunk: bytes) -> None:
        out[rank] = out.get(rank, b"") + chunk

    iact = for_provider("kubernetes", home)
    return iact.exec(handle, nodes, command, {"GREETING": "hi there"}, sink, False), out


def test_exec_returns_output_and_exit_codes_by_node(kube: Kube, cluster: Handle) -> None:  # noqa: F811
    script = (
        'echo "$GREETING" rank=$SKYPILOT_NODE_RANK/$SKYPILOT_NUM_NODES; basename "$PWD"; exit 3'
    )
    codes, out = run(kube.home, cluster, [0], script)
    assert codes == [3]
    assert out[0].decode().splitlines() == ["hi there rank=0/2", "sky_workdir"]

    codes, out = run(kube.home, cluster, [1], "echo rank=$SKYPILOT_NODE_RANK")
    assert codes == [0] and out[1] == b"rank=1\n"


def test_exec_on_all_nodes_one_stream_per_pod(kube: Kube, cluster: Handle) -> None:  # noqa: F811
    codes, out = run(
        kube.home, cluster, [0, 1], "echo n$SKYPILOT_NODE_RANK; exit $((SKYPILOT_NODE_RANK * 5))"
    )
    assert codes == [0, 5]
    assert out == {0: b"n0\n", 1: b"n1\n"}


def test_touch_annotates_the_pods(kube: Kube, cluster: Handle) -> None:  # noqa: F811
    for_provider("kubernetes", kube.home).touch(cluster)
    pods = kube.pods("ctx-a")
    assert len(pods) == 2
    assert all(ACTIVITY_ANNOTATION in p["metadata"].get("annotations", {}) for p in pods)


def test_a_node_the_cluster_lacks_is_refused(kube: Kube, cluster: Handle) -> None:  # noqa: F811
    with pytest.raises(SkyformError, match="there is no node 2"):
        run(kube.home, cluster, [2], "true")


def _exchange(conn: Any, payload: bytes) -> bytes:
    """Send `payload` and read as many bytes back. The client's port-forward cannot pass a
    half-close on (closing its side ends the whole stream), so the echo is read by length."""
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = conn.recv(65536)
        assert chunk, f"the stream ended after {len(received)} of {len(payload)} bytes"
        received += chunk
    return received


def test_connect_relays_bytes_to_a_port_in_the_pod(
    kube: Kube,  # noqa: F811
    cluster: Handle,
    echo_server: int,
) -> None:
    iact = for_provider("kubernetes", kube.home)
    conn = iact.connect(cluster, 1, echo_server)
    try:
        for payload in (b"ping", bytes(range(256)) * 800):
            assert _exchange(conn, payload) == payload
    finally:
        conn.close()
    assert kube.a.calls(path_suffix="/portforward")


def test_connect_to_a_closed_port_ends_with_the_servers_error(
    kube: Kube,  # noqa: F811
    cluster: Handle,
) -> None:
    """The API server reports a refused port on the port's error channel after accepting the
    stream; the stream then ends without a byte (`connect` itself may return first)."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    iact = for_provider("kubernetes", kube.home)
    try:
        conn = iact.connect(cluster, 0, closed)
    except ProviderError as exc:
        assert f"nothing answers on port {closed}" in str(exc)
        return
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(conn.recv(16)), daemon=True)
    try:
        reader.start()
        reader.join(TIMEOUT_S)
        assert got == [b""]
    finally:
        conn.close()


@pytest.fixture
def recorded(kube: Kube, cluster: Handle) -> dict[str, str]:  # noqa: F811
    """The cluster in the state store as `skyform apply` leaves it, and the environment the
    CLI needs (the Skyform home, the kubeconfig of the fake API servers)."""
    with open_store(None, kube.home) as store:
        store.put_resource(
            Resource(
                "cluster.dev", "cluster", "h", handles={"handle": cluster.as_dict()}, status="up"
            )
        )
    return {**os.environ, "SKYFORM_HOME": str(kube.home), "KUBECONFIG": str(kube.kubeconfig)}


def test_ssh_with_a_command_reads_piped_stdin_to_its_end(
    recorded: dict[str, str],
    kube: Kube,  # noqa: F811
) -> None:
    """`tr` ends only when its stdin does: the end of the piped stdin reaches the pod (v5's
    close of the stdin channel), and the command's output and exit code come back."""
    done = run_cli(
        recorded, "ssh", "dev", "--env", "GREETING=hi", "--",
        'tr a-z A-Z; echo "$GREETING rank=$SKYPILOT_NODE_RANK $(basename "$PWD")"; exit 5',
        stdin="hello\nfrom stdin\n",
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert done.stdout == "HELLO\nFROM STDIN\nhi rank=0 sky_workdir\n"
    annotations = [p["metadata"].get("annotations") or {} for p in kube.pods("ctx-a")]
    assert all(ACTIVITY_ANNOTATION in a for a in annotations)  # the session was activity


def worker_home(tmp_path: Path, cluster: Handle) -> Path:
    """The HOME of node 1's pod (see the `cluster` fixture)."""
    pod = {"metadata": {"name": f"{cluster.resource_id.partition('/')[2]}-1"}}
    return pod_home(tmp_path / "pods", pod)


def test_ssh_shell_reads_commands_from_stdin_on_a_worker(
    recorded: dict[str, str], tmp_path: Path, cluster: Handle
) -> None:
    done = run_cli(recorded, "ssh", "dev", "--node", "1", stdin="echo $HOME; pwd; exit 4\n")
    assert done.returncode == 4, done.stderr
    home = worker_home(tmp_path, cluster)
    assert done.stdout.splitlines() == [str(home), str(home / "sky_workdir")]


def test_exec_passes_stdin_to_one_node(recorded: dict[str, str]) -> None:
    done = run_cli(recorded, "exec", "dev", "--", "wc -l", stdin="a\nb\nc\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_ssh_gives_the_shell_a_terminal_of_the_callers_size(recorded: dict[str, str]) -> None:
    """With a terminal on stdin the exec asks for one (tty), the keys go through raw, and the
    window size is sent on the resize channel."""
    script = (  # the size may arrive just after the command starts: wait for it (bounded)
        "test -t 0 && echo on-a-tty; for i in $(seq 100); do "
        '[ "$(stty size)" = "31 97" ] && break; sleep 0.05; done; stty size; exit 7'
    )
    code, output = cli_on_a_terminal(recorded, "ssh", "dev", "--", script, rows_cols=(31, 97))
    assert code == 7, output
    assert b"on-a-tty" in output and b"31 97" in output, output


def test_port_forward_cli_relays_successive_connections_to_the_pod(
    recorded: dict[str, str], echo_server: int
) -> None:
    """The echo server serves one connection at a time, so the second connection is echoed
    only if closing the first one locally also closed its end in the pod."""
    with port_forward(recorded, "dev", echo_server) as local:
        for payloads in ((b"ping", b"x" * 100_000), (b"again", bytes(range(256)) * 40)):
            with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT_S) as conn:
                for payload in payloads:
                    assert _exchange(conn, payload) == payload


def _can_run_sshd_as_root() -> str | None:
    """Why the ProxyCommand test cannot run here, or None. The fake's "pod" is this machine:
    its `sshd -i` runs as the test's user, and Skyform's SSH config logs in to pods as root,
    which only an sshd running as root accepts."""
    if shutil.which("ssh") is None or not (
        shutil.which("sshd") or os.access("/usr/sbin/sshd", os.X_OK)
    ):
        return "OpenSSH (sshd and ssh) is not installed: run scripts/ensure-sshd.sh"
    if os.geteuid() != 0:
        return "pods are logged in to as root, and a non-root sshd admits only its own user"
    return None


@pytest.mark.skipif(_can_run_sshd_as_root() is not None, reason=str(_can_run_sshd_as_root()))
def test_openssh_reaches_the_pods_by_name_through_the_proxy(
    recorded: dict[str, str], tmp_path: Path, cluster: Handle
) -> None:
    """A real OpenSSH client, with Skyform's generated config: its ProxyCommand (`skyform
    ssh-proxy`) starts `sshd -i` in the pod over the exec stream; the sessions get the pod's
    SkyPilot variables and work directory, and the command's exit code."""
    written = run_cli(recorded, "ssh-config")
    assert written.returncode == 0, written.stderr
    config = Path(recorded["SKYFORM_HOME"]) / "ssh" / "config"
    assert "Host dev\n" in config.read_text() and "Host dev-worker1\n" in config.read_text()

    def ssh(host: str, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", host, "--", command],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, env=recorded,
            timeout=TIMEOUT_S, check=False,
        )  # fmt: skip

    head = ssh("dev", "echo ok")
    assert head.returncode == 0, head.stderr
    assert head.stdout == "ok\n"
    worker = ssh("dev-worker1", 'echo "$SKYPILOT_NODE_RANK $(basename "$PWD")"; exit 3')
    assert worker.returncode == 3, worker.stderr
    assert worker.stdout == "1 sky_workdir\n"

    source = tmp_path / "weights.bin"  # scp: the sftp subsystem, in the work directory too
    source.write_bytes(bytes(range(256)) * 100)
    copied = subprocess.run(
        ["scp", "-F", str(config), "-o", "BatchMode=yes", str(source), "dev-worker1:w.bin"],
        capture_output=True, text=True, env=recorded, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    landed = worker_home(tmp_path, cluster) / "sky_workdir" / "w.bin"
    assert landed.read_bytes() == source.read_bytes()
