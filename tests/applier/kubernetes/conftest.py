"""Two fake Kubernetes clusters on 127.0.0.1 (contexts ctx-a and ctx-b of one kubeconfig that
KUBECONFIG points at); every provider made over them is cleaned up and both servers stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s_server import FakeApiServer, write_kubeconfig
from tests.k8s_server.harness import GPU_TAINT, H100_LABELS, T4_LABELS, Kube


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    """ctx-a: a CPU node, an 8x H100 node (tainted as the GPU operator does) and a 1x T4 node
    (GKE labels); ctx-b: two CPU nodes."""
    a, b = FakeApiServer().start(), FakeApiServer().start()
    try:
        a.cluster.add_node("cpu-1", cpu="8", memory="32Gi")
        a.cluster.add_node("gpu-h100", "32", "256Gi", gpus=8, labels=H100_LABELS, taints=GPU_TAINT)
        a.cluster.add_node("gpu-t4", cpu="16", memory="64Gi", gpus=1, labels=T4_LABELS)
        b.cluster.add_node("big-1", cpu="16", memory="64Gi")
        b.cluster.add_node("big-2", cpu="16", memory="64Gi")
        config = write_kubeconfig(tmp_path / "kubeconfig", {"ctx-a": a.url, "ctx-b": b.url})
        monkeypatch.setenv("KUBECONFIG", str(config))
        kube = Kube(a, b, config, tmp_path / "home")
        yield kube
        for provider in kube.made:  # leave nothing behind, whatever the test did
            for res in provider.observe():
                provider.terminate(res.handle)
    finally:
        a.stop()
        b.stop()
