"""Getting into Kubernetes pods: commands and shells through the pod exec subresource (the
kubernetes client's WebSocket stream; a terminal when stdin is one), a port through the
portforward subresource, and OpenSSH clients through `skyform ssh-proxy`, which runs `sshd -i`
inside the pod on the exec stream's stdin/stdout (the pod's image must have OpenSSH's server).

The pods carry the SkyPilot variables in their container environment, so an exec sees them;
commands start in `$HOME/sky_workdir` when it exists, as runs do. Activity: the provider's
`last_active` is the pods' start, so `touch` checks that the pod runs and writes the pods'
`skyform.dev/last-active` annotation (epoch seconds) for the provider to read.
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
import time
import tty
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes.stream import portforward, stream

from applier.interactive import Duplex, Sink, SshTarget, check_node
from applier.interactive_ssh import LOCAL_HOST_KEY_ALIAS, ensure_keys
from applier.provider import Handle
from applier.providers import kubernetes_pods as pods
from applier.providers.kubernetes import KubernetesProvider
from applier.providers.kubernetes_api import Api, ContextSettings
from schema.errors import ProviderError, SkyformError

ACTIVITY_ANNOTATION = "skyform.dev/last-active"
STDOUT, STDERR, ERROR, RESIZE = 1, 2, 3, 4
POLL_S = 0.2  # how often a stream is read; also how soon an ended command is noticed
SSH_DIR = "/tmp/.skyform-ssh"  # inside the pod


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
        return api.call(
            f"exec in pod {pod}",
            stream,
            api.core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=pods.CONTAINER,
            command=["/bin/sh", "-c", script],
            stdout=True,
            stderr=True,
            stdin=stdin,
            tty=tty_,
            binary=True,
            _preload_content=False,
        )

    # ---- the Interactive protocol ---------------------------------------------------------

    def touch(self, handle: Handle) -> None:
        stamp = str(int(time.time()))
        for node in range(handle.num_nodes):
            api, namespace, name = self._pod(handle, node)
            body = {"metadata": {"annotations": {ACTIVITY_ANNOTATION: stamp}}}
            api.call(f"annotate pod {name}", api.core.patch_namespaced_pod, name, namespace, body)

    def shell(self, handle: Handle, node: int, command: str | None, env: Mapping[str, str]) -> int:
        api, namespace, name = self._pod(handle, node)
        terminal = os.isatty(sys.stdin.fileno())
        then = "exec bash -l 2>/dev/null || exec sh" if command is None else _run(command)
        ws = self._open(api, namespace, name, script(env, then), True, terminal)
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
        where = [(rank, *self._pod(handle, rank)) for rank in nodes]
        codes: dict[int, int] = {}
        errors: list[BaseException] = []
        streams: list[Any] = []

        def one(rank: int, api: Api, namespace: str, name: str) -> None:
            try:
                ws = self._open(api, namespace, name, script(env, _run(command)), stdin, False)
                streams.append(ws)
                if stdin:
                    _feed(ws)
                while ws.is_open():
                    ws.update(timeout=POLL_S)
                    _pass(ws, rank, sink)
                _pass(ws, rank, sink)
                codes[rank] = _code(ws)
            except BaseException as exc:  # reported by the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=w, daemon=True) for w in where]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for ws in streams:  # a stream left open (Ctrl-C) is closed
                with suppress(Exception):
                    ws.close()
        for exc in errors:
            if isinstance(exc, SkyformError):
                raise exc
            raise ProviderError(f"{handle.address}: exec failed: {exc}") from exc
        return [codes[rank] for rank in nodes]

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
        keys = ensure_keys(self._home)
        setup = (
            "command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || "
            "{ echo 'skyform: this pod image has no OpenSSH server (sshd); install "
            "openssh-server in the image to use ssh, VS Code or rsync' >&2; exit 127; }\n"
            f"umask 077; mkdir -p {SSH_DIR} /run/sshd\n"
            f"printf '%s\\n' {shlex.quote(keys.host_key.read_text())} > {SSH_DIR}/host_key\n"
            f"printf '%s\\n' {shlex.quote(keys.authorized_keys.read_text())} "
            f"> {SSH_DIR}/authorized_keys\n"
            f"exec $(command -v sshd || echo /usr/sbin/sshd) -i -e -o HostKey={SSH_DIR}/host_key "
            f"-o AuthorizedKeysFile={SSH_DIR}/authorized_keys -o StrictModes=no -o UsePAM=no "
            "-o PasswordAuthentication=no -o PermitRootLogin=prohibit-password "
            "-o AllowTcpForwarding=yes -o LogLevel=ERROR"
        )
        ws = self._open(api, namespace, name, setup, True, False)
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


def _run(command: str) -> str:
    return (
        "if command -v bash >/dev/null 2>&1; then exec bash -c "
        f"{shlex.quote(command)}; else exec sh -c {shlex.quote(command)}; fi"
    )


def script(env: Mapping[str, str], then: str) -> str:
    """The caller's variables, the work directory (as runs get it), then `then`."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    return f'{exports}[ -d "$HOME/sky_workdir" ] && cd "$HOME/sky_workdir"\n{then}\n'


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
    """This process's stdin to the stream, in the background (the v4 exec protocol has no
    end-of-stdin: a command reading to the end waits until the stream closes)."""

    def feed() -> None:
        with suppress(Exception):
            while data := os.read(sys.stdin.fileno(), 65536):
                ws.write_channel(0, data)

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
