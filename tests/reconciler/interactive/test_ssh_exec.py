"""`skyform exec`, `ssh`, `port-forward` and `status` against a real two-node local cluster:
real shells in the nodes' directories, their exit codes, and bytes relayed to a node's port."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from applier.interactive import Activity, keep_active
from tests.reconciler.interactive.conftest import CLI_TIMEOUT_S, Cluster


def test_exec_runs_in_the_node_directory_and_returns_the_exit_code(cluster: Cluster) -> None:
    before = cluster.last_active()
    done = cluster.cli(
        "exec", cluster.address, "--", "sh", "-c", "pwd; echo $SKYPILOT_NODE_RANK; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [str(cluster.workdir(0)), "0"]
    assert cluster.last_active() > before  # an exec is activity for autostop


def test_exec_on_one_node_by_rank(cluster: Cluster) -> None:
    done = cluster.cli(
        "exec",
        "x",
        "--node",
        "1",
        "--",
        "echo $SKYPILOT_NODE_RANK/$SKYPILOT_NUM_NODES; cat hello.txt",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1/2", "hello from the workdir"]


def test_exec_on_all_nodes_prefixes_output_and_returns_the_first_failure(cluster: Cluster) -> None:
    rank = "$SKYPILOT_NODE_RANK"
    script = f"echo rank-{rank}; echo err-{rank} >&2; exit $(({rank} * 5))"
    done = cluster.cli("exec", cluster.address, "--all", "--", script)
    assert done.returncode == 5
    assert sorted(done.stdout.splitlines()) == ["(node-0) rank-0", "(node-1) rank-1"]
    assert sorted(done.stderr.splitlines()) == ["(node-0) err-0", "(node-1) err-1"]


def test_exec_refuses_a_node_the_cluster_does_not_have(cluster: Cluster) -> None:
    done = cluster.cli("exec", cluster.address, "--node", "7", "--", "true")
    assert done.returncode == 1
    assert "cluster.x has nodes 0..1; there is no node 7" in done.stderr


def test_ssh_shell_reads_commands_in_the_node_directory(cluster: Cluster) -> None:
    done = cluster.cli("ssh", "x", "--node", "1", stdin="echo $HOME; pwd; exit 4\n")
    assert done.returncode == 4, done.stderr
    home = cluster.node_dir(1) / "home"
    assert done.stdout.splitlines() == [str(home), str(cluster.workdir(1))]


def test_ssh_one_command_with_an_env_passes_its_exit_code(cluster: Cluster) -> None:
    done = cluster.cli(
        "ssh",
        cluster.address,
        "--env",
        "GREETING=hi",
        "--",
        "echo $GREETING-$SKYPILOT_NODE_RANK; exit 6",
    )
    assert done.returncode == 6, done.stderr
    assert done.stdout == "hi-0\n"


def test_status_shows_how_to_connect(cluster: Cluster) -> None:
    done = cluster.cli("status", "--repo", str(cluster.repo))
    assert done.returncode == 0, done.stderr
    assert "CONNECT" in done.stdout and "skyform ssh cluster.x" in done.stdout


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on a loopback port: the node's service (local nodes share loopback)."""
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
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=CLI_TIMEOUT_S):
            raise AssertionError("port-forward printed nothing")
    return proc.stdout.readline()


def test_port_forward_relays_bytes_to_the_node_port(cluster: Cluster, echo_server: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "port-forward", "x", f"0:{echo_server}"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        assert line.startswith("Forwarding 127.0.0.1:"), line + (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        local = int(line.split("127.0.0.1:")[1].split()[0])
        for payload in (b"ping", b"x" * 200_000):
            with socket.create_connection(("127.0.0.1", local), timeout=CLI_TIMEOUT_S) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
            assert received == payload
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=CLI_TIMEOUT_S) == 0


def test_an_open_session_keeps_noting_activity() -> None:
    touched = threading.Event()
    count = 0

    def touch() -> None:
        nonlocal count
        count += 1
        if count >= 3:
            touched.set()

    with keep_active(Activity(touch, every_s=0.0), every_s=0.01):
        assert touched.wait(timeout=CLI_TIMEOUT_S)


def test_ssh_gives_the_shell_a_terminal_when_stdin_is_one(cluster: Cluster) -> None:
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "ssh",
                "x",
                "--",
                "test -t 0 && echo on-a-tty",
            ],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=cluster.env(),
        )
        assert proc.wait(timeout=CLI_TIMEOUT_S) == 0
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
    assert b"on-a-tty" in output
