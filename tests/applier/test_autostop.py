"""Autostop on the local provider with real processes: idle clusters stop, busy ones do not."""

from __future__ import annotations

import time
from pathlib import Path

from applier.autostop import enforce
from applier.provider import LaunchRequest, Placement, ResourceKind, ResourceStatus
from applier.providers.local import LocalProvider
from schema.loader import load_tasks


def _cluster(provider: LocalProvider, name: str, autostop: str, tmp_path: Path) -> None:
    text = f"resources: {{cpus: 0.1, memory: 0.1, autostop: {autostop}}}\nrun: echo up\n"
    task = load_tasks(text, f"{name}.yaml").tasks[0].task
    provider.launch(
        LaunchRequest(
            address=f"cluster.{name}",
            skyform_id=f"{name}-0123456789",
            kind=ResourceKind.CLUSTER,
            task=task,
            placement=Placement("local", cpus=0.1, memory_gib=0.1),
            base_dir=tmp_path,
        )
    )


def test_idle_clusters_stop_or_go_down(tmp_path: Path) -> None:
    provider = LocalProvider(tmp_path / "home", grace_s=0.5)
    try:
        _cluster(provider, "idle", "1", tmp_path)
        _cluster(provider, "gone", "{idle_minutes: 1, down: true}", tmp_path)
        _cluster(provider, "busy", "30", tmp_path)
        assert enforce({"local": provider}, time.time()) == []  # nobody idle yet
        later = time.time() + 5 * 60
        stopped = enforce({"local": provider}, later)
        assert sorted((s.address, s.down) for s in stopped) == [
            ("cluster.gone", True),
            ("cluster.idle", False),
        ]
        states = {o.handle.address: o.status for o in provider.observe()}
        assert states == {"cluster.idle": ResourceStatus.STOPPED, "cluster.busy": ResourceStatus.UP}
        assert enforce({"local": provider}, later) == []  # stopped clusters are left alone
    finally:
        for o in provider.observe():
            provider.terminate(o.handle)
