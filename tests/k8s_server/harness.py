"""Test helpers over the fake clusters: `Kube` (two contexts, providers made over them),
launch requests, bounded waits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from applier.provider import LaunchRequest, Placement, ResourceKind
from applier.providers.kubernetes import KubernetesProvider
from applier.providers.kubernetes_api import ContextSettings
from schema.loader import load_tasks
from tests.k8s_server.server import FakeApiServer

H100_LABELS = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
T4_LABELS = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
GPU_JOB = "resources:\n  accelerators: H100:2\nrun: python train.py\n"
GPU_TAINT = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


@dataclass
class Kube:
    a: FakeApiServer
    b: FakeApiServer
    kubeconfig: Path
    home: Path
    made: list[KubernetesProvider] = field(default_factory=list)

    def server(self, context: str) -> FakeApiServer:
        return self.a if context == "ctx-a" else self.b

    def provider(
        self, *contexts: str, pricing: dict[str, Any] | None = None, **kwargs: Any
    ) -> KubernetesProvider:
        names = contexts or ("ctx-a", "ctx-b")
        kwargs.setdefault("schedule_timeout_s", 2.0)
        kwargs.setdefault("poll_s", 0.05)
        provider = KubernetesProvider(
            self.home, [ContextSettings(c, pricing=pricing) for c in names], **kwargs
        )
        self.made.append(provider)
        return provider

    def pods(self, context: str = "ctx-a", labels: str | None = None) -> list[dict[str, Any]]:
        return self.server(context).cluster.pods(labels)


def request(
    yaml: str,
    context: str = "ctx-a",
    *,
    address: str = "job.train",
    kind: ResourceKind = ResourceKind.JOB,
    num_nodes: int = 1,
    accelerator: str | None = None,
    count: float = 0.0,
    cpus: float = 1.0,
    memory_gib: float = 2.0,
    ports: tuple[int, ...] = (),
) -> LaunchRequest:
    placement = Placement(
        cloud="kubernetes",
        region=context,
        accelerator=accelerator,
        accelerator_count=count,
        cpus=cpus,
        memory_gib=memory_gib,
    )
    return LaunchRequest(
        address=address,
        skyform_id=str(uuid.uuid4()),
        kind=kind,
        task=load_tasks(yaml, "test.yaml").tasks[0].task,
        placement=placement,
        num_nodes=num_nodes,
        ports=ports,
    )


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}
