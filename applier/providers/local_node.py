"""The local provider's node supervisor: one detached process group per node that runs setup
and run, and records their exit codes in files, so a later Skyform process can observe them.

It is run by path (`python -I local_node.py NODE_DIR`) and so imports only the standard library;
the provider imports its small file and /proc helpers too, so both sides agree on the format.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PEER_POLL_S = 0.1
SHELL = shutil.which("bash") or "/bin/sh"  # SkyPilot runs setup and run with bash


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader (or a crash) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def is_alive(pid: int, start_time: int) -> bool:
    """The same process (not a reused pid) exists and has not exited (zombies count as gone)."""
    stat = proc_stat(pid)
    return stat is not None and stat[1] == start_time and stat[0] not in ("Z", "X")


def node_alive(node_dir: Path) -> bool | None:
    """Whether a node's supervisor runs; None when it never registered."""
    rec = read_json(node_dir / "state" / "pid.json")
    if rec is None:
        return None
    return is_alive(int(rec["pid"]), int(rec["start_time"]))


def _run_stage(command: str, env: dict[str, str], cwd: str, log: Path) -> int:
    full_env = {**os.environ, **env}
    with log.open("ab") as out:
        proc = subprocess.run(
            [SHELL, "-c", command], cwd=cwd, env=full_env, stdout=out, stderr=out, check=False
        )
    code = proc.returncode
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


def _peer_setup_outcome(peer: Path, setup_hash: str) -> str:
    """'ok', 'failed' or 'waiting' for one peer node's setup (the barrier before run)."""
    done = peer / "state" / "setup.done"
    if done.exists() and done.read_text() == setup_hash:
        return "ok"
    exit_rec = read_json(peer / "state" / "exit.json")
    if exit_rec is not None:
        return "failed"
    return "failed" if node_alive(peer) is False else "waiting"


def _wait_for_peers(peers: list[str], setup_hash: str) -> bool:
    """SkyPilot starts run on no node until setup succeeded on all of them."""
    pending = [Path(p) for p in peers]
    while pending:
        outcomes = {p: _peer_setup_outcome(p, setup_hash) for p in pending}
        if "failed" in outcomes.values():
            return False
        pending = [p for p, o in outcomes.items() if o == "waiting"]
        if pending:
            time.sleep(PEER_POLL_S)
    return True


def supervise(node_dir: Path) -> None:
    state = node_dir / "state"
    spec = read_json(state / "spec.json") or {}
    cwd = str(spec["cwd"])
    setup, setup_hash = spec.get("setup"), str(spec.get("setup_hash") or "")
    done_file = state / "setup.done"
    if setup and not (done_file.exists() and done_file.read_text() == setup_hash):
        write_text(state / "stage", "setup")
        code = _run_stage(setup, spec["setup_env"], cwd, node_dir / "setup.log")
        if code != 0:
            write_json(state / "exit.json", {"stage": "setup", "code": code})
            _linger(spec)
            return
        write_text(done_file, setup_hash)
    if setup and not _wait_for_peers(spec.get("peers", []), setup_hash):
        write_json(state / "exit.json", {"stage": "aborted", "code": 0})
        _linger(spec)
        return
    run = spec.get("run")
    if run:
        write_text(state / "stage", "run")
        code = _run_stage(run, spec["run_env"], cwd, node_dir / "run.log")
        write_json(state / "exit.json", {"stage": "run", "code": code})
    elif spec.get("record", True):
        write_json(state / "exit.json", {"stage": "run", "code": 0})
    write_text(state / "stage", "idle")
    _linger(spec)


def _linger(spec: dict[str, Any]) -> None:
    """A cluster node stays up (idle) after its run until stopped or terminated."""
    while spec.get("stay"):
        signal.pause()


def detach_and_supervise(node_dir: Path) -> int:
    """Double fork: the caller waits only until the supervisor registered its pid; the
    supervisor leads its own session (its pgid is the node) and is reparented to init."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        ready = os.read(read_end, 1)
        return 0 if ready else 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    pid = os.getpid()
    stat = proc_stat(pid)
    start_time = stat[1] if stat else 0
    write_json(node_dir / "state" / "pid.json", {"pid": pid, "pgid": pid, "start_time": start_time})
    os.write(write_end, b"1")
    os.close(write_end)
    try:
        supervise(node_dir)
    except BaseException:
        # No exit.json is written, so observe() reports the node lost; the reason is kept here.
        import traceback

        (node_dir / "state" / "supervisor.err").write_text(traceback.format_exc())
    os._exit(0)


if __name__ == "__main__":
    sys.exit(detach_and_supervise(Path(sys.argv[1])))
