"""A cloud node's run, driven over SSH (AWS and GCP): a small detached driver on the node runs
setup then run and records stage and exit codes in files, so the job outlives the SSH session
and the Skyform process; Skyform reads those files and copies the logs' new bytes into a local
mirror under the Skyform home, which is what `log_paths` returns.

On the node, everything of one resource's node lives in `<root>/<resource>/node-<rank>/` (root
`~/.skyform-node` unless the provider's `remote_root` setting says otherwise):
driver.sh, setup.sh, run.sh, setup.env and run.env (0600: they carry the task's secrets, as
SkyPilot's job scripts on the node do), setup.log, run.log, exec.log and state/. Under the SSH
host override several nodes share one host, so each node's HOME is its own `home/` there.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from applier.providers import ssh
from schema.errors import ProviderError
from schema.task import GitWorkdir, Storage, Task

WORKDIR = "sky_workdir"
LOGS = ("setup", "run", "exec")

# $1: the node directory; $2: 1 when the node must wait for its peers' setup (multi-node);
# $3: 1 to use the node directory's home/ as HOME. Exit codes land in state/exit as
# "<stage> <code>".
DRIVER = r"""#!/bin/bash
R="$(cd "$1" && pwd)"; S="$R/state"; mkdir -p "$S"
echo $$ > "$S/pid"
[ "$3" = 1 ] && export HOME="$R/home"
CWD="$HOME"; [ -d "$HOME/sky_workdir" ] && CWD="$HOME/sky_workdir"
finish() {
  echo "$1 $2" > "$S/exit.tmp"; mv "$S/exit.tmp" "$S/exit"; echo idle > "$S/stage"; exit 0
}
stage() { (cd "$CWD" && set -a && . "$R/$1.env" && set +a && exec bash "$R/$1.sh"); }
if [ -s "$R/setup.sh" ] && [ "$(cat "$S/setup.done" 2>/dev/null)" != "$(cat "$R/setup.hash")" ]
then
  echo setup > "$S/stage"
  stage setup >> "$R/setup.log" 2>&1
  code=$?
  [ "$code" = 0 ] || finish setup "$code"
  cp "$R/setup.hash" "$S/setup.done"
fi
touch "$S/setup.ok"
if [ "$2" = 1 ]; then
  echo wait > "$S/stage"
  while [ ! -e "$S/go" ] && [ ! -e "$S/abort" ]; do sleep 0.5; done
  [ -e "$S/abort" ] && finish aborted 1
fi
code=0
if [ -s "$R/run.sh" ]; then
  echo run > "$S/stage"
  stage run >> "$R/run.log" 2>&1
  code=$?
fi
finish run "$code"
"""

_STATE = (
    'S={dir}/state; printf "stage=%s\\n" "$(cat $S/stage 2>/dev/null)"; '
    'printf "exit=%s\\n" "$(cat $S/exit 2>/dev/null)"; '
    "[ -e $S/setup.ok ] && echo setup_ok=1; [ -e $S/pid ] && echo started=1; "
    'p=$(cat $S/pid 2>/dev/null); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo alive=1; true'
)


@dataclass(frozen=True)
class NodeRun:
    """What one node runs: the task's scripts with their environments."""

    rank: int
    setup: str | None
    run: str | None
    setup_env: Mapping[str, str]
    run_env: Mapping[str, str]
    setup_hash: str
    wait_for_peers: bool


@dataclass(frozen=True)
class NodeState:
    started: bool
    stage: str | None
    exit_stage: str | None
    exit_code: int | None
    alive: bool
    setup_ok: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DEFAULT_ROOT = ".skyform-node"


def node_dir(root: str, resource: str, rank: int) -> str:
    """The node directory; a relative `root` is under the SSH user's home (where commands and
    SFTP start)."""
    return f"{root.rstrip('/')}/{resource}/node-{rank}"


def _home(t: ssh.Target, rdir: str) -> str:
    return f"{rdir}/home" if t.isolated else "."


def check_task(address: str, task: Task) -> None:
    """Refuse, before creating anything, inputs that cannot be sent to a node over SSH yet."""
    if isinstance(task.workdir, GitWorkdir):
        raise ProviderError(f"{address}: a git workdir is not supported on clouds yet")
    for dest, src in (task.file_mounts or {}).items():
        if isinstance(src, Storage) or "://" in src:
            raise ProviderError(
                f"{address}: file_mounts {dest!r}: buckets are not supported on clouds yet; "
                "mount local paths only"
            )


def _upload_inputs(
    sftp: paramiko.SFTPClient, task: Task, base_dir: Path, home: str, isolated: bool
) -> None:
    if isinstance(task.workdir, str):
        ssh.put_tree(sftp, _local(task.workdir, base_dir), f"{home}/{WORKDIR}")
    for dest, src in (task.file_mounts or {}).items():
        assert isinstance(src, str)  # buckets were refused by check_task
        if dest.startswith("/") and isolated:
            raise ProviderError(f"file_mounts {dest!r}: absolute paths need a real node")
        remote = dest if dest.startswith("/") else f"{home}/{dest.removeprefix('~/')}"
        ssh.put_tree(sftp, _local(src, base_dir), remote)


def _local(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _env_file(env: Mapping[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def start(
    client: paramiko.SSHClient, t: ssh.Target, rdir: str, node: NodeRun, task: Task, base_dir: Path
) -> None:
    """Upload the node's files and start its driver, unless a driver was started already."""
    if read_state(client, rdir).started:
        return  # an earlier (interrupted) launch started it: adopt, never run twice
    ssh.check(client, f"mkdir -p {rdir}/state {_home(t, rdir)}", "preparing the node directory")
    sftp = client.open_sftp()
    try:
        _upload_inputs(sftp, task, base_dir, _home(t, rdir), t.isolated)
        ssh.put_text(sftp, f"{rdir}/driver.sh", DRIVER, 0o755)
        ssh.put_text(sftp, f"{rdir}/setup.sh", node.setup or "")
        ssh.put_text(sftp, f"{rdir}/run.sh", node.run or "")
        ssh.put_text(sftp, f"{rdir}/setup.hash", node.setup_hash + "\n")
        ssh.put_text(sftp, f"{rdir}/setup.env", _env_file(node.setup_env), 0o600)
        ssh.put_text(sftp, f"{rdir}/run.env", _env_file(node.run_env), 0o600)
    except OSError as exc:
        raise ProviderError(f"copying files to the node failed: {exc}") from exc
    finally:
        sftp.close()
    wait = "1" if node.wait_for_peers else "0"
    isolated = "1" if t.isolated else "0"
    command = (
        f"setsid nohup bash {rdir}/driver.sh {rdir} {wait} {isolated} "
        f"</dev/null >{rdir}/driver.log 2>&1 & echo started"
    )
    ssh.check(client, command, "starting the node's driver")


def read_state(client: paramiko.SSHClient, rdir: str) -> NodeState:
    _, out = ssh.run(client, _STATE.format(dir=rdir))
    fields = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    exit_stage, _, code = fields.get("exit", "").partition(" ")
    return NodeState(
        started=fields.get("started") == "1",
        stage=fields.get("stage") or None,
        exit_stage=exit_stage or None,
        exit_code=int(code) if code.strip().lstrip("-").isdigit() else None,
        alive=fields.get("alive") == "1",
        setup_ok=fields.get("setup_ok") == "1",
    )


def release(client: paramiko.SSHClient, rdir: str, abort: bool) -> None:
    """Let a node waiting for its peers' setup start its run (or give up)."""
    mark = "abort" if abort else "go"
    ssh.check(client, f"touch {rdir}/state/{mark}", "releasing the node")


def sync_logs(client: paramiko.SSHClient, rdir: str, mirror: Path) -> None:
    sftp = client.open_sftp()
    try:
        for stage in LOGS:
            ssh.fetch_new(sftp, f"{rdir}/{stage}.log", mirror / f"{stage}.log")
    except OSError as exc:
        raise ProviderError(f"fetching logs from the node failed: {exc}") from exc
    finally:
        sftp.close()


def execute(
    client: paramiko.SSHClient, t: ssh.Target, rdir: str, command: str, env: Mapping[str, str]
) -> int:
    """Run `command` in the node's run directory and environment; output goes to exec.log."""
    home = '"$R/home"' if t.isolated else '"$HOME"'
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    script = (
        f'R="$(cd {rdir} && pwd)" && export HOME={home}; CWD=$HOME; '
        f'[ -d "$HOME/{WORKDIR}" ] && CWD="$HOME/{WORKDIR}"; '
        f'cd "$CWD" && set -a && . "$R/run.env" && set +a && '
        f"{'export ' + exports + ' && ' if exports else ''}"
        f'bash -c {shlex.quote(command)} >> "$R/exec.log" 2>&1'
    )
    code, _ = ssh.run(client, script)
    return code


def write_mirror_state(mirror: Path, state: NodeState) -> None:
    mirror.mkdir(parents=True, exist_ok=True)
    tmp = mirror / "state.json.tmp"
    tmp.write_text(json.dumps(state.as_dict()))
    tmp.replace(mirror / "state.json")


def read_mirror_state(mirror: Path) -> NodeState | None:
    try:
        return NodeState(**json.loads((mirror / "state.json").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
