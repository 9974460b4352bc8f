"""Getting into cloud instances (AWS, GCP) over SSH with paramiko: a shell or command runs in
the node's work directory with the variables its jobs get (the node's `run.env`, see
`applier.providers.ssh_node`); a port on a node is reached through a `direct-tcpip` channel;
OpenSSH clients go straight to the instance's sshd with Skyform's key (no ProxyCommand).

A cloud module supplies `CloudNodes` (where the nodes are, and how activity is recorded) and
builds `CloudInteractive` with the provider's own settings: `ssh_user`, `remote_root` and
`ssh_host_override`, as the provider read them. The CLI has no provider settings, so
`SKYFORM_SSH_USER` and `SKYFORM_REMOTE_ROOT` stand in for the first two there (the host
override has its own variable, `SKYFORM_SSH_HOST_OVERRIDE`); they must agree with what the
provider used at launch.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import paramiko

from applier.interactive import Duplex, Sink, SshTarget, check_node, on_each_node, relay
from applier.provider import Handle
from applier.providers import local_files as files
from applier.providers import ssh, ssh_node
from schema.errors import ProviderError

USER_ENV = "SKYFORM_SSH_USER"
ROOT_ENV = "SKYFORM_REMOTE_ROOT"
DEFAULT_USER = "ubuntu"
CONNECT_TIMEOUT_S = 30.0  # the cluster is UP: its sshd answers, no boot to wait for
STOP_GRACE_S = 2  # an abandoned command gets this long after SIGINT before SIGKILL
NO_STATUS = 255  # no exit status (killed by a signal, connection lost): what ssh returns


class CloudNodes(Protocol):
    """What a cloud provider tells the shared code about a resource's nodes."""

    def addresses(self, handle: Handle) -> list[str]:
        """Each node's SSH address by rank (public, else private); ProviderError unless every
        node is running."""
        ...

    def record_activity(self, handle: Handle) -> None:
        """Record interactive use for autostop; ProviderError unless the cluster runs."""
        ...


def setting(settings: Mapping[str, Any], name: str, env: str, default: str) -> str:
    return str(settings.get(name) or os.environ.get(env) or default)


class CloudInteractive:
    """See the module docstring. `home` is the Skyform home (its `ssh/id_ed25519` is the key
    the instances were launched with)."""

    def __init__(self, home: Path, settings: Mapping[str, Any], nodes: CloudNodes) -> None:
        self._home = home
        self._settings = dict(settings)
        self._nodes = nodes
        self._user = setting(settings, "ssh_user", USER_ENV, DEFAULT_USER)
        self._root = setting(settings, "remote_root", ROOT_ENV, ssh_node.DEFAULT_ROOT)

    # ---- where a node is ------------------------------------------------------------------

    def _target(self, handle: Handle, node: int) -> ssh.Target:
        check_node(handle, node)
        addresses = self._nodes.addresses(handle)
        if len(addresses) <= node:
            raise ProviderError(f"{handle.address} node {node} has no instance (any more)")
        key, _ = ssh.ensure_key(self._home)
        return ssh.target(addresses[node], self._settings, self._user, key)

    def _connect(self, t: ssh.Target) -> paramiko.SSHClient:
        return ssh.connect(t, CONNECT_TIMEOUT_S, interval_s=1.0)

    def _script(
        self, handle: Handle, node: int, t: ssh.Target, env: Mapping[str, str], then: str
    ) -> str:
        """The node's run directory, HOME and variables (as `ssh_node.execute` sets them up),
        the caller's `env` on top, then `then`. A node that never ran anything has no
        `run.env`: it gets the directory and HOME only."""
        resource = files.resource_dir_name(handle.address, handle.skyform_id)
        rdir = ssh_node.node_dir(self._root, resource, node)
        home = 'mkdir -p "$R/home" && export HOME="$R/home"' if t.isolated else ":"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
        return (
            f"R={shlex.quote(rdir)}\n"
            'case "$R" in /*) ;; *) R="$HOME/$R" ;; esac\n'
            f"{home}\n"
            'CWD="$HOME"; [ -d "$HOME/sky_workdir" ] && CWD="$HOME/sky_workdir"\n'
            'cd "$CWD" || exit 1\n'
            'if [ -f "$R/run.env" ]; then set -a; . "$R/run.env"; set +a; fi\n'
            f"{exports}"
            f"{then}\n"
        )

    # ---- the Interactive protocol ---------------------------------------------------------

    def touch(self, handle: Handle) -> None:
        self._nodes.record_activity(handle)

    def shell(self, handle: Handle, node: int, command: str | None, env: Mapping[str, str]) -> int:
        t = self._target(handle, node)
        then = "exec bash -l" if command is None else f"exec bash -c {shlex.quote(command)}"
        script = self._script(handle, node, t, env, then)
        client = self._connect(t)
        try:
            chan = client.get_transport().open_session()
            terminal = os.isatty(sys.stdin.fileno())
            if terminal:
                cols, rows = os.get_terminal_size(sys.stdin.fileno())
                chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
            chan.exec_command(f"sh -c {shlex.quote(script)}")
            return _attach(chan, terminal)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ProviderError(f"{handle.address} node {node}: SSH session failed: {exc}") from exc
        finally:
            client.close()

    def exec(
        self,
        handle: Handle,
        nodes: Sequence[int],
        command: str,
        env: Mapping[str, str],
        sink: Sink,
        stdin: bool,
    ) -> list[int]:
        targets = {rank: self._target(handle, rank) for rank in nodes}
        clients: list[paramiko.SSHClient] = []
        lock = threading.Lock()

        def one(rank: int) -> int:
            t = targets[rank]
            client = self._connect(t)
            with lock:
                clients.append(client)
            then = f"bash -c {shlex.quote(command)}"
            if not stdin:
                then = _stopped_with_the_session(then)
            script = self._script(handle, rank, t, env, then)
            chan = client.get_transport().open_session()
            chan.exec_command(f"sh -c {shlex.quote(script)}")
            if stdin:
                _feed_stdin(chan)
            readers = [
                threading.Thread(target=_drain, args=(recv, rank, fd, sink), daemon=True)
                for fd, recv in ((1, chan.recv), (2, chan.recv_stderr))
            ]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            return _status(chan.recv_exit_status())

        def cleanup() -> None:
            with lock:
                for client in clients:  # the remote commands see their session end
                    client.close()

        return on_each_node(handle.address, nodes, one, cleanup, "SSH exec")

    def connect(self, handle: Handle, node: int, port: int) -> Duplex:
        t = self._target(handle, node)
        client = self._connect(t)
        try:
            chan = client.get_transport().open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10
            )
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise ProviderError(
                f"nothing answers on port {port} of {handle.address} node {node}: {exc}"
            ) from exc
        return _Tunnel(client, chan)

    def ssh_target(self, handle: Handle, node: int) -> SshTarget:
        t = self._target(handle, node)
        return SshTarget(
            user=t.user,
            hostname=t.host,
            port=None if t.port == 22 else t.port,
            identity_file=t.key_path,
        )

    def serve_ssh(self, handle: Handle, node: int) -> int:
        """Not needed by Skyform's own config (clouds have no ProxyCommand), but a config that
        names one still works: the bytes of stdin/stdout are relayed to the node's sshd."""
        t = self._target(handle, node)
        try:
            conn = socket.create_connection((t.host, t.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise ProviderError(f"cannot reach {t.host}:{t.port}: {exc}") from exc
        conn.settimeout(None)
        relay(_StdStreams(), conn, lambda: None)
        return 0


def _status(raw: int) -> int:
    return NO_STATUS if raw < 0 else raw


def _stopped_with_the_session(command: str) -> str:
    """`command` in a process group of its own that is interrupted (then killed) when the
    session's stdin ends, i.e. when Skyform goes away (Ctrl-C) before it finishes: without a
    terminal, sshd would leave it running."""
    return (
        f"setsid {command} </dev/null &\n"
        "p=$!\n"
        "{ cat >/dev/null; kill -INT -$p; sleep "
        f"{STOP_GRACE_S}; kill -KILL -$p; }} >/dev/null 2>&1 &\n"
        "w=$!\n"
        'wait "$p"; c=$?\n'
        "kill $w 2>/dev/null\n"
        'exit "$c"'
    )


def _drain(recv: Callable[[int], bytes], rank: int, fd: int, sink: Sink) -> None:
    with suppress(OSError, EOFError, paramiko.SSHException):
        while chunk := recv(65536):
            sink(rank, fd, chunk)


def _feed_stdin(chan: paramiko.Channel) -> None:
    """Copy this process's stdin to the channel in the background; its end is a half-close."""

    def feed() -> None:
        try:
            while data := os.read(sys.stdin.fileno(), 65536):
                chan.sendall(data)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    threading.Thread(target=feed, name="skyform-stdin", daemon=True).start()


def _attach(chan: paramiko.Channel, terminal: bool) -> int:
    """This process's stdin/stdout/stderr on the channel until the remote side exits; with a
    terminal, raw mode (the keys, Ctrl-C included, are the remote shell's) and window sizes."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if terminal else None
    old_winch: Any = None
    if terminal:

        def resize(signum: int, frame: FrameType | None) -> None:
            with suppress(OSError, paramiko.SSHException):
                cols, rows = os.get_terminal_size(fd)
                chan.resize_pty(width=cols, height=rows)

        old_winch = signal.signal(signal.SIGWINCH, resize)
        tty.setraw(fd)
    try:
        _feed_stdin(chan)
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        while True:
            with suppress(InterruptedError):
                select.select([chan], [], [], 1.0)
            while chan.recv_ready():
                os.write(out, chan.recv(65536))
            while chan.recv_stderr_ready():
                os.write(err, chan.recv_stderr(65536))
            pending = chan.recv_ready() or chan.recv_stderr_ready()
            if chan.exit_status_ready() and not pending and (chan.eof_received or chan.closed):
                break
        return _status(chan.recv_exit_status())
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old_winch)


class _Tunnel:
    """A `direct-tcpip` channel that owns its SSH connection."""

    def __init__(self, client: paramiko.SSHClient, chan: paramiko.Channel) -> None:
        self._client = client
        self._chan = chan

    def recv(self, size: int, /) -> bytes:
        try:
            return bytes(self._chan.recv(size))
        except (EOFError, paramiko.SSHException) as exc:
            raise OSError(str(exc)) from exc

    def sendall(self, data: bytes, /) -> None:
        try:
            self._chan.sendall(data)
        except (EOFError, paramiko.SSHException) as exc:
            raise OSError(str(exc)) from exc

    def shutdown_write(self) -> None:
        with suppress(EOFError, paramiko.SSHException):
            self._chan.shutdown_write()

    def close(self) -> None:
        self._chan.close()
        self._client.close()


class _StdStreams:
    """This process's stdin (read) and stdout (write) as one Duplex."""

    def recv(self, size: int, /) -> bytes:
        return os.read(sys.stdin.fileno(), size)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(sys.stdout.fileno(), view) :]

    def shutdown_write(self) -> None:
        with suppress(OSError):
            os.close(sys.stdout.fileno())

    def close(self) -> None:
        pass
