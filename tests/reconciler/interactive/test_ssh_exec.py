"""`skyform exec`, `ssh`, `port-forward` and `status` against a real two-node local cluster:
real shells in the nodes' directories, their exit codes, and bytes relayed to a node's port."""

from __future__ import annotations

import threading

from applier.interactive import Activity, keep_active
from tests.reconciler.interactive.conftest import (
    CLI_TIMEOUT_S,
    Cluster,
    cli_on_a_terminal,
    port_forward,
    round_trip,
)


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


def test_port_forward_relays_bytes_to_the_node_port(cluster: Cluster, echo_server: int) -> None:
    with port_forward(cluster.env(), "x", echo_server) as local:
        for payload in (b"ping", b"x" * 200_000):
            assert round_trip(local, payload) == payload


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
    code, output = cli_on_a_terminal(cluster.env(), "ssh", "x", "--", "test -t 0 && echo on-a-tty")
    assert code == 0, output
    assert b"on-a-tty" in output
