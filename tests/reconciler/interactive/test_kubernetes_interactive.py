"""`exec` and port-forward on Kubernetes pods through the real kubernetes client against the
tests' fake API server (`tests/k8s_server`): a two-pod cluster launched by the provider, whose
exec subresource here runs the command as a real shell with the pod's environment, and whose
portforward subresource (`tests/k8s_server/portforward_ws.py`) reaches a pod's port N at
127.0.0.1:N, so a TCP echo server on the loopback stands in for a process in the pod.

Not exercised offline: the fake does not stream stdin into exec, so `ssh`'s shell and
`ssh-proxy` (sshd -i on the exec stream) cannot be driven here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
from tests.k8s_server.harness import Kube, env_of, request
from tests.reconciler.interactive.test_aws_interactive import echo_server  # noqa: F401
from tests.reconciler.interactive.test_ssh_exec import _first_line

TIMEOUT_S = 30


@pytest.fixture
def cluster(kube: Kube, tmp_path: Path) -> Iterator[Handle]:  # noqa: F811
    """Two running pods; an exec runs `/bin/sh -c SCRIPT` here, HOME a directory per pod with
    a sky_workdir in it, and the pod's own container environment (SkyPilot's variables)."""

    def handler(pod: dict[str, Any], command: list[str]) -> tuple[int, str]:
        home = tmp_path / pod["metadata"]["name"]
        (home / "sky_workdir").mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            command,
            env={"PATH": "/usr/bin:/bin", **env_of(pod), "HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
        return done.returncode, done.stdout.decode()

    kube.a.cluster.exec_handler = handler
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
    echo_server: int,  # noqa: F811
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


def test_port_forward_cli_relays_to_the_pod(
    kube: Kube,  # noqa: F811
    cluster: Handle,
    echo_server: int,  # noqa: F811
) -> None:
    with open_store(None, kube.home) as store:
        store.put_resource(
            Resource(
                "cluster.dev", "cluster", "h", handles={"handle": cluster.as_dict()}, status="up"
            )
        )
    env = {**os.environ, "SKYFORM_HOME": str(kube.home), "KUBECONFIG": str(kube.kubeconfig)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "port-forward", "dev", f"0:{echo_server}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        if not line.startswith("Forwarding 127.0.0.1:"):
            assert proc.stderr is not None
            raise AssertionError(line + proc.stderr.read())
        local = int(line.split("127.0.0.1:")[1].split()[0])
        # One connection: the fake's echo server serves one at a time, and whether the pod's
        # end of a forwarded connection is closed when the local one is is not checked here.
        with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT_S) as conn:
            for payload in (b"ping", b"x" * 100_000):
                assert _exchange(conn, payload) == payload
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
