"""A real two-node local cluster made by `skyform apply`, shared by a module's tests, and a way
to run the `skyform` CLI as its own process (real file descriptors, terminals and exit codes)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from applier.providers.local import LocalProvider
from tests.conftest import stop_everything
from tests.planner.plan_helpers import write_repo

REPO = {
    "skyform.yaml": "infra: [local]\n",
    "clusters/x.yaml": "resources: {cpus: 0.1, memory: 0.1}\nnum_nodes: 2\nworkdir: code\n",
    "code/hello.txt": "hello from the workdir\n",
}
CLI_TIMEOUT_S = 60


@dataclass(frozen=True)
class Cluster:
    home: Path
    repo: Path
    address: str = "cluster.x"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SKYFORM_HOME": str(self.home)}

    def node_dir(self, rank: int) -> Path:
        (observed,) = LocalProvider(self.home).observe()
        return self.home / "local" / observed.handle.resource_id / f"node-{rank}"

    def workdir(self, rank: int) -> Path:
        return self.node_dir(rank) / "home" / "sky_workdir"

    def last_active(self) -> float:
        (observed,) = LocalProvider(self.home).observe()
        return observed.last_active

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=CLI_TIMEOUT_S,
            check=False,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("interactive")
    home = base / "skyform-home"
    home.mkdir()
    made = Cluster(home=home, repo=write_repo(base / "repo", REPO))
    try:
        done = made.cli("apply", str(made.repo), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        yield made
    finally:
        stop_everything(home)
