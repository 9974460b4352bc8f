"""Getting into Kubernetes pods: commands and shells through the pod exec subresource (the
kubernetes client's WebSocket stream; a terminal when stdin is one), a port through the
portforward subresource, and OpenSSH clients through `skyform ssh-proxy`, which runs `sshd -i`
inside the pod on the exec stream's stdin/stdout (the pod's image must have OpenSSH's server).

The pods carry the SkyPilot variables in their container environment, so an exec sees them;
commands (and SSH sessions) start in `$HOME/sky_workdir` when it exists, as runs do. The end of
this process's stdin is passed on where the API server speaks `v5.channel.k8s.io` (Kubernetes
1.30 and later); over v4 a command reading to the end of stdin waits until the stream closes.
Activity: `touch` checks that the pods run and writes their `skyform.dev/last-active`
annotation (epoch seconds), which the provider reports as `last_active` for autostop.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes.stream import portforward

from applier.interactive import Duplex, Sink, SshTarget, check_node, on_each_node
from applier.interactive_ssh import LOCAL_HOST_KEY_ALIAS, SFTP_SERVERS, SshKeys, ensure_keys
from applier.provider import Handle
from applier.providers import kubernetes_exec as kexec
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes import KubernetesProvider
from applier.providers.kubernetes_api import Api, ContextSettings
from schema.errors import ProviderError

ACTIVITY_ANNOTATION = pods.ACTIVITY
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
POLL_S = 0.2  # how often a stream is read; also how soon an ended command is noticed
SSH_DIR = '"${TMPDIR:-/tmp}/.skyform-ssh"'  # inside the pod (a shell word)
SHELL = "exec bash -l 2>/dev/null || exec sh"  # an interactive login shell


class KubernetesInteractive:
    """See the module docstring. `home` is the Skyform home."""

    def __init__(self, home: Path, settings: Mapping[str, Any]) -> None:
        self._home = home
        self._settings = dict(settings)
        self._providers: dict[str | None, KubernetesProvider] = {}
        self._lock = threading.Lock()

    def _api(self, handle: Handle) -> Api:
        """The handle's context (its placement's region), whatever this repo's settings say:
        the pod is where the handle was recorded."""
        context = handle.placement.region
        with self._lock:
            if context not in self._providers:
                self._providers[context] = KubernetesProvider(
                    self._home, [ContextSettings(context)]
                )
            provider = self._providers[context]
        return provider.api(provider.contexts[0])

    def _pod(self, handle: Handle, node: int) -> tuple[Api, str, str]:
        """(api, namespace, pod) of a running node; ProviderError otherwise."""
        check_node(handle, node)
        api = self._api(handle)
        namespace, _, prefix = handle.resource_id.partition("/")
        name = pods.pod_name(prefix, node)
        pod = api.call(f"read pod {name}", api.core.read_namespaced_pod, name, namespace)
        phase = getattr(pod.status, "phase", None)
        if phase != "Running":
            raise ProviderError(
                f"{handle.address} node {node} (pod {namespace}/{name}) is {phase or 'unknown'}"
                "; it must be Running to connect"
            )
        return api, namespace, name

    def _open(
        self, api: Api, namespace: str, pod: str, script: str, stdin: bool, tty_: bool
    ) -> Any:
        return kexec.open_exec(api, namespace, pod, script, stdin=stdin, tty=tty_, binary=True)

    # ---- the Interactive protocol ---------------------------------------------------------

    def touch(self, handle: Handle) -> None:
        running = [self._pod(handle, node) for node in range(handle.num_nodes)]
        api, namespace, _ = running[0]
        kexec.mark_active(api, namespace, [name for _, _, name in running])

    def shell(self, handle: Handle, node: int, command: str | None, env: Mapping[str, str]) -> int:
        api, namespace, name = self._pod(handle, node)
        terminal = os.isatty(sys.stdin.fileno())
        then = SHELL if command is None else kexec.run_command(command)
        ws = self._open(api, namespace, name, kexec.script(env, then), True, terminal)
        try:
            return _attach(ws, terminal)
        finally:
            ws.close()

    def exec(
        self,
        handle: Handle,
        nodes: Sequence[int],
        command: str,
        env: Mapping[str, str],
        sink: Sink,
        stdin: bool,
    ) -> list[int]:
        where = {rank: self._pod(handle, rank) for rank in nodes}
        streams: list[Any] = []

        def one(rank: int) -> int:
            api, namespace, name = where[rank]
            script = kexec.script(env, kexec.run_command(command))
            ws = self._open(api, namespace, name, script, stdin, False)
            streams.append(ws)
            if stdin:
                _feed(ws)
            while ws.is_open():
                ws.update(timeout=POLL_S)
                _pass(ws, rank, sink)
            _pass(ws, rank, sink)
            return _code(ws)

        def cleanup() -> None:
            for ws in streams:  # a stream left open (Ctrl-C) is closed
                with suppress(Exception):
                    ws.close()

        return on_each_node(handle.address, nodes, one, cleanup)

    def connect(self, handle: Handle, node: int, port: int) -> Duplex:
        api, namespace, name = self._pod(handle, node)
        forward = api.call(
            f"port-forward to pod {name}",
            portforward,
            api.core.connect_get_namespaced_pod_portforward,
            name,
            namespace,
            ports=str(port),
        )
        sock = forward.socket(port)
        sock.setblocking(True)
        error = forward.error(port)
        if error:
            sock.close()
            raise ProviderError(f"nothing answers on port {port} of {handle.address}: {error}")
        return _PodPort(sock)

    def ssh_target(self, handle: Handle, node: int) -> SshTarget:
        check_node(handle, node)
        return SshTarget(user="root", proxy=True, host_key_alias=LOCAL_HOST_KEY_ALIAS)

    def serve_ssh(self, handle: Handle, node: int) -> int:
        """`sshd -i` in the pod with Skyform's host key and authorized client key, on the exec
        stream; this process's stdin/stdout carry the SSH protocol."""
        api, namespace, name = self._pod(handle, node)
        ws = self._open(api, namespace, name, sshd_script(ensure_keys(self._home)), True, False)
        try:
            _feed(ws)
            out = sys.stdout.fileno()
            while ws.is_open():
                ws.update(timeout=POLL_S)
                if data := ws.read_channel(STDOUT):
                    os.write(out, data)
                if data := ws.read_channel(STDERR):
                    os.write(sys.stderr.fileno(), data)
            code = _code(ws)
            if code == 127:
                raise ProviderError(f"pod {namespace}/{name} has no OpenSSH server (sshd)")
            return code
        finally:
            ws.close()


def sshd_script(keys: SshKeys) -> str:
    """What runs in the pod for one SSH connection: Skyform's host key and authorized client
    key into a private directory, and an `sshd -i` whose every session (shell, command, sftp)
    starts as `skyform ssh` does: the container's environment (this exec's, so the SkyPilot
    variables; sshd would give sessions a clean one) and the work directory. The image's own
    sshd_config (its Subsystem line, say) applies otherwise."""
    session = (
        '. "${0%/*}/env"\n'  # sshd runs it as `/bin/sh <dir>/session`
        '[ -d "$HOME/sky_workdir" ] && cd "$HOME/sky_workdir"\n'
        'if [ -n "${SSH_ORIGINAL_COMMAND:-}" ]; then\n'
        # sftp (scp) where the image's sshd_config names sshd's own: the program instead
        '  case "$SSH_ORIGINAL_COMMAND" in internal-sftp*)\n'
        f"    for s in {' '.join(SFTP_SERVERS)}; do [ -x $s ] && exec $s; done ;;\n"
        "  esac\n"
        '  command -v bash >/dev/null 2>&1 && exec bash -c "$SSH_ORIGINAL_COMMAND"\n'
        '  exec sh -c "$SSH_ORIGINAL_COMMAND"\n'
        "fi\n"
        f"{SHELL}\n"
    )
    files = {
        "host_key": keys.host_key.read_text(),
        "authorized_keys": keys.authorized_keys.read_text(),
        "session": session,
    }
    puts = "".join(f"put {name} {shlex.quote(text)}\n" for name, text in files.items())
    return (
        "command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || "
        "{ echo 'skyform: this pod image has no OpenSSH server (sshd); install "
        "openssh-server in the image to use ssh, VS Code or rsync' >&2; exit 127; }\n"
        f'umask 077; D={SSH_DIR}; mkdir -p "$D" /run/sshd\n'
        # Whole files only: another connection's sshd may be reading them.
        'put() { printf \'%s\\n\' "$2" > "$D/$1.$$" && mv -f "$D/$1.$$" "$D/$1"; }\n'
        'export -p > "$D/env.$$" && mv -f "$D/env.$$" "$D/env"\n'
        f"{puts}"
        'exec $(command -v sshd || echo /usr/sbin/sshd) -i -e -o "HostKey=$D/host_key" '
        '-o "AuthorizedKeysFile=$D/authorized_keys" -o "ForceCommand=/bin/sh $D/session" '
        "-o StrictModes=no -o UsePAM=no -o PasswordAuthentication=no "
        "-o PermitRootLogin=prohibit-password -o AllowTcpForwarding=yes -o LogLevel=ERROR"
    )


class _PodPort:
    """A port-forward stream. The protocol has no half-close: the end of what is sent ends the
    whole stream (the client then closes its WebSocket and the API server the pod's connection),
    so a forwarded connection ends when its local side stops sending, as with kubectl."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def recv(self, size: int, /) -> bytes:
        return bytes(self._sock.recv(size))

    def sendall(self, data: bytes, /) -> None:
        self._sock.sendall(data)

    def shutdown_write(self) -> None:
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()


def _pass(ws: Any, rank: int, sink: Sink) -> None:
    for channel in (STDOUT, STDERR):
        if data := ws.read_channel(channel):
            sink(rank, channel, bytes(data))


def _code(ws: Any) -> int:
    code = ws.returncode
    if code is None:
        raise ProviderError("the exec stream ended without the command's exit status")
    return int(code)


def _feed(ws: Any) -> None:
    """This process's stdin to the stream, in the background; its end closes the stream's
    stdin (v5; the v4 protocol has no end-of-stdin: see the module docstring)."""

    def feed() -> None:
        with suppress(Exception):
            while data := os.read(sys.stdin.fileno(), 65536):
                ws.write_channel(STDIN, data)
            ws.close_channel(STDIN)

    threading.Thread(target=feed, name="skyform-stdin", daemon=True).start()


def _attach(ws: Any, terminal: bool) -> int:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if terminal else None
    old_winch: Any = None

    def resize(signum: int = 0, frame: FrameType | None = None) -> None:
        with suppress(Exception):
            cols, rows = os.get_terminal_size(fd)
            ws.write_channel(RESIZE, json.dumps({"Width": cols, "Height": rows}))

    if terminal:
        old_winch = signal.signal(signal.SIGWINCH, resize)
        resize()
        tty.setraw(fd)
    try:
        _feed(ws)
        while ws.is_open():
            ws.update(timeout=POLL_S)
            for channel, out in ((STDOUT, sys.stdout.fileno()), (STDERR, sys.stderr.fileno())):
                if data := ws.read_channel(channel):
                    os.write(out, data)
        return _code(ws)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old_winch)


def make(home: Path, settings: Mapping[str, Any]) -> KubernetesInteractive:
    return KubernetesInteractive(home, settings)
