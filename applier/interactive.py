"""Getting into a cluster's nodes (`skyform ssh`, `exec`, `ssh-proxy`, `port-forward`): the
per-provider `Interactive` protocol, its registry, and the provider-neutral parts built on it.
"""

from __future__ import annotations

import importlib
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from applier.provider import Handle
from schema.errors import ProviderError, SkyformError

# Providers with a way in; each module offers `make(home, settings) -> Interactive`.
MODULES = {
    "local": "applier.interactive_local",
    "kubernetes": "applier.interactive_kubernetes",
    "aws": "applier.interactive_aws",
    "gcp": "applier.interactive_gcp",
}
HEARTBEAT_S = 60.0  # autostop counts minutes, so a touch a minute keeps an open session active

Sink = Callable[[int, int, bytes], None]  # (rank, fd 1 or 2, chunk)


@dataclass(frozen=True)
class SshTarget:
    """How an OpenSSH client reaches one node: a real sshd (clouds: hostname, port, key), or
    `proxy` through `skyform ssh-proxy` for nodes only Skyform can reach (local, pods).

    With `host_key_alias` the node's host key is one Skyform generated and pinned in its
    known_hosts; without, the client learns it on first use (accept-new).
    """

    user: str
    hostname: str = "127.0.0.1"
    port: int | None = None
    identity_file: Path | None = None  # None: Skyform's own client key
    proxy: bool = False
    host_key_alias: str | None = None


class Duplex(Protocol):
    """A byte stream to a port on a node: a socket, a paramiko channel, a pod port-forward."""

    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> Any: ...

    def close(self) -> None: ...


class Interactive(Protocol):
    """One provider's way into a cluster's nodes. `node` is a rank, 0 the head."""

    def touch(self, handle: Handle) -> None:
        """Record activity for autostop; ProviderError when the cluster is not UP."""
        ...

    def shell(self, handle: Handle, node: int, command: str | None, env: Mapping[str, str]) -> int:
        """A shell (or `command`) on the node, on this process's stdin/stdout/stderr, with a
        terminal when stdin is one; its exit code."""
        ...

    def exec(
        self,
        handle: Handle,
        nodes: Sequence[int],
        command: str,
        env: Mapping[str, str],
        sink: Sink,
        stdin: bool,
    ) -> list[int]:
        """Run `command` on `nodes` at once with the jobs' SkyPilot variables, streaming output
        to `sink`; exit codes in `nodes` order. `stdin`: pass this process's stdin (one node).
        Whatever is left running when this returns or raises (Ctrl-C) is stopped."""
        ...

    def connect(self, handle: Handle, node: int, port: int) -> Duplex:
        """A byte stream to `port` on the node; ProviderError when nothing listens there."""
        ...

    def ssh_target(self, handle: Handle, node: int) -> SshTarget: ...

    def serve_ssh(self, handle: Handle, node: int) -> int:
        """Speak the SSH protocol on stdin/stdout until the client leaves (the ProxyCommand)."""
        ...


def for_provider(name: str, home: Path, settings: Mapping[str, Any] | None = None) -> Interactive:
    module_name = MODULES.get(name)
    if module_name is None:
        raise ProviderError(f"Skyform cannot connect to {name} clusters yet (ssh, exec, ...)")
    iact: Interactive = importlib.import_module(module_name).make(home, settings or {})
    return iact


def command_line(args: Sequence[str]) -> str | None:
    """One argument is a shell command as written (`-- 'make && ./run'`); several are a
    command with its arguments, quoted so they arrive as given (`-- sh -c 'exit 3'`)."""
    if not args:
        return None
    return args[0] if len(args) == 1 else shlex.join(args)


def check_node(handle: Handle, node: int) -> None:
    if not 0 <= node < handle.num_nodes:
        raise ProviderError(
            f"{handle.address} has nodes 0..{handle.num_nodes - 1}; there is no node {node}"
        )


class Activity:
    """Touches a cluster at most every `every_s` seconds; a failed touch never ends a session
    (the cluster may have been stopped under it: the session's own errors say so)."""

    def __init__(self, touch: Callable[[], None], every_s: float = HEARTBEAT_S) -> None:
        self._touch = touch
        self._every_s = every_s
        self._last = float("-inf")
        self._lock = threading.Lock()

    def note(self) -> None:
        with self._lock:
            if time.monotonic() - self._last < self._every_s:
                return
            self._last = time.monotonic()
        with suppress(ProviderError):
            self._touch()


@contextmanager
def keep_active(activity: Activity, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Note activity now and every `every_s` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            activity.note()

    thread = threading.Thread(target=beat, name="skyform-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class LinePrefixer:
    """Writes each node's output line by line as `(node-N) line`, so nodes never interleave
    inside a line; `flush` writes what is left of unterminated lines."""

    def __init__(self, write: Callable[[int, bytes], None]) -> None:
        self._write = write
        self._partial: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    def __call__(self, rank: int, fd: int, chunk: bytes) -> None:
        with self._lock:
            data = self._partial.pop((rank, fd), b"") + chunk
            *lines, rest = data.split(b"\n")
            for line in lines:
                self._write(fd, b"(node-%d) %s\n" % (rank, line))
            if rest:
                self._partial[(rank, fd)] = rest

    def flush(self) -> None:
        with self._lock:
            for (rank, fd), rest in sorted(self._partial.items()):
                self._write(fd, b"(node-%d) %s\n" % (rank, rest))
            self._partial.clear()


def first_failure(codes: Sequence[int]) -> int:
    return next((c for c in codes if c != 0), 0)


def on_each_node(
    address: str,
    nodes: Sequence[int],
    one: Callable[[int], int],
    cleanup: Callable[[], None],
    what: str = "exec",
) -> list[int]:
    """`one(rank)` for every node at once, each in a thread of its own; their exit codes in
    `nodes` order. `cleanup` runs however this ends (Ctrl-C included), to stop what is left
    running; then a node's error is raised (a SkyformError as it is)."""
    codes: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            codes[rank] = one(rank)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(rank,), daemon=True) for rank in nodes]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        cleanup()
    for exc in errors:
        if isinstance(exc, SkyformError):
            raise exc
        raise ProviderError(f"{address}: {what} failed: {exc}") from exc
    return [codes[rank] for rank in nodes]


def relay(a: Duplex, b: Duplex, on_data: Callable[[], None]) -> None:
    """Copy bytes both ways until both directions end; a side's end of stream is passed on as a
    half-close where the stream supports one, then both are closed."""

    def pump(src: Duplex, dst: Duplex) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                on_data()
        except OSError:
            pass
        _shut_write(dst)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()
    a.close()
    b.close()


def _shut_write(stream: Duplex) -> None:
    try:
        if isinstance(stream, socket.socket):
            stream.shutdown(socket.SHUT_WR)
        elif callable(getattr(stream, "shutdown_write", None)):
            stream.shutdown_write()  # type: ignore[attr-defined]
    except OSError:
        pass  # already closed by the peer
