"""A Kubernetes-API-compatible server for tests, on 127.0.0.1 (stdlib only): the subset the
official `kubernetes` client and `kubectl get` use, with a tiny scheduler and a scripted kubelet.

    api = FakeApiServer().start()
    api.cluster.add_node("gpu-1", gpus=8, labels={"nvidia.com/gpu.product": "NVIDIA-H100"})
    write_kubeconfig(path, {"ctx-a": api.url})
    api.cluster.exec_runner = processes_in(tmp)  # optional: execs run for real (pod_exec)
    ...
    api.stop()
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from tests.k8s_server.cluster import FakeCluster, quantity
from tests.k8s_server.server import FakeApiServer


def write_kubeconfig(
    path: Path, servers: Mapping[str, str], current: str | None = None, namespace: str | None = None
) -> Path:
    """A kubeconfig with one context (and cluster and user) per name -> server URL; JSON is
    valid YAML, which is all the client needs."""
    names = list(servers)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": n, "user": {"token": f"token-{n}"}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in names],
        "current-context": current or names[0],
    }
    if namespace:
        for entry in config["contexts"]:
            assert isinstance(entry, dict)
            entry["context"]["namespace"] = namespace
    path.write_text(json.dumps(config, indent=2))
    return path


__all__ = ["FakeApiServer", "FakeCluster", "quantity", "write_kubeconfig"]
