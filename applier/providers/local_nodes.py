"""Local node processes seen from the provider: starting a node's supervisor, running a command
on nodes (exec), and stopping nodes' process groups.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from applier.provider import ResourceKind
from applier.providers import local_files as files
from applier.providers import local_node
from applier.providers.local_machine import stop_group
from schema.errors import ProviderError

NODE_SCRIPT = local_node.__file__
REGISTER_WAIT_S = 2.0  # how long a node spawned by a killed launch may take to register


def registered(node: Path) -> bool:
    """Whether the node's supervisor was started (and registered its pid).

    A launch killed between starting the supervisor and its registration leaves only the
    `spawned` mark; the supervisor, detached, still registers within moments, so wait for it
    rather than start a second one.
    """
    state = node / "state"
    if not (state / "spawned").exists():
        return False
    deadline = time.monotonic() + REGISTER_WAIT_S
    while not (state / "pid.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return (state / "pid.json").exists()


def spawn(node: Path, spec: dict[str, Any], env: Mapping[str, str]) -> None:
    """Start the node's supervisor; returns once it has registered its pid."""
    state = node / "state"
    state.mkdir(parents=True, exist_ok=True)
    for stale in ("pid.json", "stage"):
        (state / stale).unlink(missing_ok=True)
    local_node.write_json(state / "spec.json", spec)
    (state / "spawned").touch()
    proc_env = {**os.environ, **env, "HOME": str(files.node_home(node))}
    done = subprocess.run(
        [sys.executable, "-I", NODE_SCRIPT, str(node)],
        env=proc_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise ProviderError(f"{node}: the node supervisor did not start: {err or done.returncode}")


def exec_on_nodes(
    rdir: Path,
    meta: Mapping[str, Any],
    command: str,
    node: int | None,
    env: Mapping[str, str],
    stage: str,
) -> int:
    """Run `command` on one node or all at once, appending to `<stage>.log`; the first non-zero
    exit code by rank, else 0."""
    n = int(meta["num_nodes"])
    if node is not None and not 0 <= node < n:
        raise ProviderError(f"{meta['address']} has nodes 0..{n - 1}, not {node}")
    ranks = range(n) if node is None else [node]
    ports = meta.get("ports") or []
    port = ports[0] if meta["kind"] == ResourceKind.SERVICE_REPLICA and ports else None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in ranks:
            nd = files.node_dir(rdir, rank)
            spec = local_node.read_json(nd / "state" / "spec.json") or {}
            sky_env = files.skypilot_env(meta, rank, "setup" if stage == "setup" else "run", port)
            proc_env = {**os.environ, **env, **sky_env, "HOME": str(files.node_home(nd))}
            with (nd / f"{stage}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [local_node.SHELL, "-c", command],
                        cwd=spec.get("cwd") or files.node_home(nd),
                        env=proc_env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # interrupted: leave nothing running
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    codes = [128 - c if c < 0 else c for c in codes]
    return next((c for c in codes if c != 0), 0)


def kill_nodes(rdir: Path, grace_s: float, num_nodes: int) -> None:
    """Stop every node's process group (SIGTERM, then SIGKILL after `grace_s`)."""
    for rank in range(num_nodes):
        node = files.node_dir(rdir, rank)
        if not registered(node):
            continue
        pid = local_node.read_json(node / "state" / "pid.json")
        if pid is not None:
            stop_group(int(pid["pgid"]), int(pid["start_time"]), grace_s)
