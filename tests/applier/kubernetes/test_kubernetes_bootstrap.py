"""The pod's bootstrap script, run for real by /bin/sh on this machine as a container would run
it: setup then run with SkyPilot's variables, peers resolved to SKYPILOT_NODE_IPS, the exit code
of the stage that failed, and the run's exit recorded for a cluster's readiness probe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from applier.providers.kubernetes_pods import BOOTSTRAP


def bootstrap(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SKYFORM_POD_IP": "10.0.0.7",
        "SKYFORM_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        ["/bin/sh", "-c", BOOTSTRAP],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_setup_then_run_in_the_workdir_with_the_node_ips(tmp_path: Path) -> None:
    out = bootstrap(
        tmp_path,
        SKYFORM_SETUP="echo setup > marker",
        SKYFORM_RUN='cat marker; echo "ips=$SKYPILOT_NODE_IPS"; pwd',
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["setup", "ips=10.0.0.7", str(tmp_path / "sky_workdir")]
    assert (tmp_path / "state" / "run.exit").read_text().strip() == "0"


@pytest.mark.skipif(shutil.which("getent") is None, reason="no getent to resolve peers with")
def test_peers_are_resolved_one_per_line(tmp_path: Path) -> None:
    out = bootstrap(
        tmp_path, SKYFORM_NODE_HOSTS="localhost localhost", SKYFORM_RUN='echo "$SKYPILOT_NODE_IPS"'
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line in ("127.0.0.1", "::1") for line in lines)


def test_a_failing_setup_stops_before_run_with_its_exit_code(tmp_path: Path) -> None:
    out = bootstrap(tmp_path, SKYFORM_SETUP="exit 7", SKYFORM_RUN="echo never")
    assert out.returncode == 7
    assert "never" not in out.stdout and "setup exited with 7" in out.stderr


def test_the_run_exit_code_is_the_containers(tmp_path: Path) -> None:
    out = bootstrap(tmp_path, SKYFORM_RUN="exit 3")
    assert out.returncode == 3
    assert (tmp_path / "state" / "run.exit").read_text().strip() == "3"
