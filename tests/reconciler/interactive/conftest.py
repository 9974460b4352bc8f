"""A real two-node local cluster made by `skyform apply`, shared by a module's tests, and a way
to run the `skyform` CLI as its own process (real file descriptors, terminals and exit codes)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator, Mapping
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
        return run_cli(self.env(), *args, stdin=stdin)


def run_cli(
    env: Mapping[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`skyform ARGS` as a process of its own, `stdin` piped in (else none)."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def cli_on_a_terminal(
    env: Mapping[str, str], *args: str, rows_cols: tuple[int, int] | None = None
) -> tuple[int, bytes]:
    """`skyform ARGS` with a new terminal (of `rows_cols`, if given) as its stdin, stdout and
    stderr: its exit code and all it wrote there."""
    controller, terminal = os.openpty()
    try:
        if rows_cols is not None:
            size = struct.pack("HHHH", *rows_cols, 0, 0)
            fcntl.ioctl(terminal, termios.TIOCSWINSZ, size)
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", *args],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=dict(env),
        )
        code = proc.wait(timeout=CLI_TIMEOUT_S)
        os.close(terminal)
        terminal = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(controller, 4096):
                output += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return code, output


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


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on a loopback port: the node's (or instance's) service."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(CLI_TIMEOUT_S)
                try:
                    while data := conn.recv(4096):
                        conn.sendall(data)
                except OSError:
                    continue  # the client left the connection open and idle, or reset it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def first_line(proc: subprocess.Popen[str]) -> str:
    """The first line a CLI process prints, failing after CLI_TIMEOUT_S of silence."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=CLI_TIMEOUT_S):
            raise AssertionError("the command printed nothing")
    return proc.stdout.readline()


@contextlib.contextmanager
def port_forward(env: Mapping[str, str], target: str, remote: int) -> Iterator[int]:
    """`skyform port-forward TARGET 0:REMOTE` as a process of its own, yielding the local port
    it listens on; on exit it is stopped with SIGINT, as a user's Ctrl-C, and must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "port-forward", target, f"0:{remote}"],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = first_line(proc)
        if not line.startswith("Forwarding 127.0.0.1:"):
            proc.kill()
            _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
            raise AssertionError(line + err)
        yield int(line.split("127.0.0.1:")[1].split()[0])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 0, err


def round_trip(local: int, payload: bytes) -> bytes:
    """Send `payload` over a new connection to 127.0.0.1:`local`, half-close, read it all."""
    with socket.create_connection(("127.0.0.1", local), timeout=CLI_TIMEOUT_S) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received
