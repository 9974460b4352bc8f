"""Getting into local nodes: a shell or command runs in the node's work directory with the node's
HOME and the jobs' SkyPilot variables; OpenSSH clients get a per-connection `sshd -i` that
starts every session the same way; a node's ports are this machine's loopback ports.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from applier.interactive import Duplex, Sink, SshTarget, check_node
from applier.interactive_ssh import LOCAL_HOST_KEY_ALIAS, ensure_keys, sshd_config, sshd_path
from applier.provider import Handle, ResourceKind, ResourceStatus
from applier.providers import local_files as files
from applier.providers import local_node
from applier.providers.local import LocalProvider
from schema.errors import ProviderError

STOP_GRACE_S = 2.0  # an interrupted command gets this long after SIGINT before SIGKILL
OUTPUT_DRAIN_S = 1.0  # a background process may hold the output open after the command ends


def _code(raw: int) -> int:
    return 128 - raw if raw < 0 else raw  # killed by signal N: the shell's 128+N


class LocalInteractive:
    """See the module docstring. `home` is the Skyform home."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._provider = LocalProvider(home)

    def _node(self, handle: Handle, node: int) -> tuple[Path, dict[str, str]]:
        """(cwd, variables added to this process's environment): what the node's run gets."""
        check_node(handle, node)
        rdir = self._home / "local" / handle.resource_id
        meta = files.read_meta(rdir)
        if meta is None or meta["skyform_id"] != handle.skyform_id:
            raise ProviderError(f"{handle.address} is gone from this machine ({rdir})")
        if meta["status"] != ResourceStatus.UP:
            raise ProviderError(
                f"{handle.address} is {meta['status']}; start it (skyform apply) to connect"
            )
        nd = files.node_dir(rdir, node)
        spec = local_node.read_json(nd / "state" / "spec.json") or {}
        ports = meta.get("ports") or []
        port = ports[0] if meta["kind"] == ResourceKind.SERVICE_REPLICA and ports else None
        env = files.skypilot_env(meta, node, "run", port)
        env["HOME"] = str(files.node_home(nd))
        return Path(spec.get("cwd") or files.node_home(nd)), env

    def touch(self, handle: Handle) -> None:
        # `run` is the provider's one public verb that records activity; `:` does nothing else.
        self._provider.run(handle, ":", node=0)

    def shell(self, handle: Handle, node: int, command: str | None, env: Mapping[str, str]) -> int:
        cwd, extra = self._node(handle, node)
        argv = [local_node.SHELL] + (["-c", command] if command is not None else [])
        # The shell shares this terminal (a tty when stdin is one), so it gets the keys itself.
        proc = _popen(argv, cwd, {**os.environ, **env, **extra})
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the shell's, not ours
        try:
            return _code(proc.wait())
        finally:
            signal.signal(signal.SIGINT, old)
            _stop(proc, own_group=False)

    def exec(
        self,
        handle: Handle,
        nodes: Sequence[int],
        command: str,
        env: Mapping[str, str],
        sink: Sink,
        stdin: bool,
    ) -> list[int]:
        prepared = [(rank, *self._node(handle, rank)) for rank in nodes]
        procs: list[subprocess.Popen[bytes]] = []
        readers: list[threading.Thread] = []
        try:
            for rank, cwd, extra in prepared:
                proc = _popen(
                    [local_node.SHELL, "-c", command],
                    cwd,
                    {**os.environ, **env, **extra},
                    stdin=None if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # so an interrupt stops its children too
                )
                procs.append(proc)
                for fd, pipe in ((1, proc.stdout), (2, proc.stderr)):
                    reader = threading.Thread(
                        target=_pump, args=(pipe, rank, fd, sink), daemon=True
                    )
                    reader.start()
                    readers.append(reader)
            codes = [_code(p.wait()) for p in procs]
            for reader in readers:
                reader.join(timeout=OUTPUT_DRAIN_S)
            return codes
        finally:
            for proc in procs:
                _stop(proc, own_group=True)

    def connect(self, handle: Handle, node: int, port: int) -> Duplex:
        self._node(handle, node)
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as exc:
            raise ProviderError(
                f"nothing answers on port {port} of {handle.address} node {node}: {exc}"
            ) from exc
        conn.settimeout(None)
        return conn

    def ssh_target(self, handle: Handle, node: int) -> SshTarget:
        check_node(handle, node)
        return SshTarget(user=getpass.getuser(), proxy=True, host_key_alias=LOCAL_HOST_KEY_ALIAS)

    def serve_ssh(self, handle: Handle, node: int) -> int:
        """An `sshd -i` on our stdin/stdout (inherited, so the bytes never pass through Python),
        configured in a directory of its own that goes when the connection does."""
        cwd, extra = self._node(handle, node)
        keys = ensure_keys(self._home)
        sshd = sshd_path()
        _privsep_dir()
        run_root = keys.directory / "run"
        run_root.mkdir(mode=0o700, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="proxy-", dir=run_root))
        try:
            script = run_dir / "session.sh"
            # sshd gives sessions a clean environment; the proxy's PATH is the user's.
            env = {"PATH": os.environ.get("PATH", os.defpath), **extra}
            script.write_text(session_script(cwd, env))
            config = run_dir / "sshd_config"
            config.write_text(sshd_config(keys, script))
            proc = _popen([sshd, "-i", "-e", "-f", str(config)], run_dir, dict(os.environ))
            try:
                return _code(proc.wait())
            finally:
                _stop(proc, own_group=False)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def session_script(cwd: Path, env: Mapping[str, str]) -> str:
    """What sshd runs for every session: the node's variables and directory, then the client's
    command (a shell command line, as sshd would run it) or an interactive shell."""
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    shell = shlex.quote(local_node.SHELL)
    return (
        f"{exports}\n"
        f"cd {shlex.quote(str(cwd))} || exit 1\n"
        f'if [ -n "${{SSH_ORIGINAL_COMMAND:-}}" ]; then\n'
        f'  exec {shell} -c "$SSH_ORIGINAL_COMMAND"\n'
        "fi\n"
        f"exec {shell}\n"
    )


def _popen(
    argv: list[str], cwd: Path, env: Mapping[str, str], **kw: Any
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, cwd=cwd, env=dict(env), **kw)
    except OSError as exc:
        raise ProviderError(f"cannot start {argv[0]} in {cwd}: {exc}") from exc


def _pump(pipe: IO[bytes], rank: int, fd: int, sink: Sink) -> None:
    with pipe:
        while chunk := os.read(pipe.fileno(), 65536):
            sink(rank, fd, chunk)


def _stop(proc: subprocess.Popen[bytes], own_group: bool) -> None:
    """Interrupt what is still running (its whole group when it leads one), then kill it."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            if own_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _privsep_dir() -> None:
    """sshd run by root wants its privilege-separation directory, which lives in /run and so is
    gone after a reboot unless the sshd service recreates it; the service may not run here."""
    if os.geteuid() == 0:
        with suppress(OSError):  # on failure sshd's own message says what is missing
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def make(home: Path, settings: Mapping[str, Any]) -> LocalInteractive:
    return LocalInteractive(home)
