"""`exec` and port-forward on Kubernetes pods through the real kubernetes client against the
tests' fake API server (`tests/k8s_server`): a two-pod cluster launched by the provider, whose
exec subresource here runs the command as a real shell with the pod's environment.

Not exercised offline: port-forward. The fake API server implements pod exec over WebSocket
(output, then the exit status on the error channel) but not the portforward subresource, which
needs a bidirectional WebSocket (client frames per port channel) that the fake does not speak
yet; `test_port_forward_is_refused_by_a_server_without_it` shows the client's request reaching
the server and the refusal becoming a ProviderError. Neither does the fake stream stdin, so
`ssh`'s shell and `ssh-proxy` (sshd -i on the exec stream) cannot be driven here either.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from applier.interactive import for_provider
from applier.interactive_kubernetes import ACTIVITY_ANNOTATION
from applier.provider import Handle, ResourceKind
from schema.errors import SkyformError
from tests.applier.kubernetes.conftest import kube  # noqa: F401
from tests.k8s_server.harness import Kube, env_of, request

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


def test_port_forward_is_refused_by_a_server_without_it(kube: Kube, cluster: Handle) -> None:  # noqa: F811
    """See the module docstring: the fake has no portforward subresource."""
    iact = for_provider("kubernetes", kube.home)
    with pytest.raises(SkyformError):
        iact.connect(cluster, 0, 8888)
    assert kube.a.calls(path_suffix="/portforward")
