"""`skyform ssh`, `exec`, `port-forward`, `ssh-config` and the hidden `ssh-proxy`: getting into
a declared cluster's nodes, whatever the provider (see `applier.interactive`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import BinaryIO, NoReturn

import click

from applier.interactive import (
    Activity,
    Interactive,
    LinePrefixer,
    check_node,
    command_line,
    first_failure,
    for_provider,
    keep_active,
)
from applier.interactive_forward import PortForward
from applier.interactive_ssh import include_line, install_include, target_handle, write_ssh_config
from applier.provider import Handle
from reconciler.cli.common import parse_env_pairs
from reconciler.context import open_state, skyform_home
from schema.errors import SkyformError
from state import Store


def register(group: click.Group) -> None:
    for command in (ssh, exec_, port_forward, ssh_config, ssh_proxy):
        group.add_command(command)


def update_ssh_config(store: Store) -> None:
    """Regenerate `<home>/ssh/config` after an apply or destroy; a failure here is a warning,
    never a failed apply."""
    try:
        write_ssh_config(skyform_home(), store.list_resources())
    except (OSError, SkyformError) as exc:
        click.echo(f"Warning: could not update the SSH config: {exc}", err=True)


def _resolve(address: str, state_url: str | None) -> tuple[Handle, Interactive]:
    address = address if "." in address else f"cluster.{address}"
    try:
        with open_state(state_url, None) as store:
            record = store.get_resource(address)
        if record is None:
            raise click.ClickException(f"{address} is not in the state; see `skyform status`")
        if record.kind != "cluster":
            raise click.ClickException(
                f"{address} is a {record.kind}; ssh, exec and port-forward reach clusters only"
            )
        handle_data = (record.handles or {}).get("handle")
        if not handle_data:
            raise click.ClickException(
                f"{address} has no nodes recorded (status {record.status}); run `skyform apply`"
            )
        handle = Handle.from_dict(handle_data)
        return handle, for_provider(handle.provider, skyform_home())
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc


def _exits_on(*signals: signal.Signals) -> None:
    """Turn these signals into a clean exit, so `finally` blocks stop what we started."""

    def leave(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(128 + signum)

    for sig in signals:
        signal.signal(sig, leave)


STATE = click.option("--state", "state_url", metavar="URL", help="The state store's URL.")
NODE = click.option("--node", default=0, show_default=True, help="The node's rank (0: head).")
ENV = click.option(
    "--env", "env", multiple=True, metavar="NAME=VALUE", help="Set a variable (repeatable)."
)
COMMAND = click.argument("command", nargs=-1, type=click.UNPROCESSED)


@click.command()
@click.argument("address")
@NODE
@ENV
@STATE
@COMMAND
@click.pass_context
def ssh(
    ctx: click.Context,
    address: str,
    node: int,
    env: tuple[str, ...],
    state_url: str | None,
    command: tuple[str, ...],
) -> None:
    """A shell on a cluster's node, or one command after `--`; exits with its exit code.

    Local nodes: a shell in the node's work directory, with the node's HOME and the SkyPilot
    variables its jobs get. One argument after `--` is a shell command line; several are a
    command and its arguments.
    """
    variables = parse_env_pairs(env)
    handle, iact = _resolve(address, state_url)
    _exits_on(signal.SIGTERM, signal.SIGHUP)
    try:
        check_node(handle, node)
        iact.touch(handle)
        with keep_active(Activity(lambda: iact.touch(handle))):
            code = iact.shell(handle, node, command_line(command), variables)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.exit(code)


def _writer() -> Callable[[int, bytes], None]:
    """Writes output chunks from several threads to our stdout (fd 1) or stderr (fd 2)."""
    streams: dict[int, BinaryIO] = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    lock = threading.Lock()

    def write(fd: int, data: bytes) -> None:
        with lock:
            streams[fd].write(data)
            streams[fd].flush()

    return write


@click.command("exec")
@click.argument("address")
@NODE
@click.option("--all", "all_nodes", is_flag=True, help="Run on every node at once.")
@ENV
@STATE
@COMMAND
@click.pass_context
def exec_(
    ctx: click.Context,
    address: str,
    node: int,
    all_nodes: bool,
    env: tuple[str, ...],
    state_url: str | None,
    command: tuple[str, ...],
) -> None:
    """Run a command on a cluster's node (or `--all`), with the SkyPilot variables its jobs get.

    Output streams as it comes (`(node-N)` before each line with --all); the exit code is the
    command's, with --all the first non-zero one by rank.
    """
    line = command_line(command)
    if line is None:
        raise click.UsageError("give the command after `--`: skyform exec ADDRESS -- COMMAND")
    variables = parse_env_pairs(env)
    handle, iact = _resolve(address, state_url)
    nodes = list(range(handle.num_nodes)) if all_nodes else [node]
    write = _writer()
    prefixer = LinePrefixer(write)
    sink = prefixer if all_nodes else (lambda rank, fd, chunk: write(fd, chunk))
    _exits_on(signal.SIGTERM, signal.SIGHUP)  # so the commands are stopped, not orphaned
    try:
        for n in nodes:
            check_node(handle, n)
        iact.touch(handle)
        with keep_active(Activity(lambda: iact.touch(handle))):
            codes = iact.exec(handle, nodes, line, variables, sink, not all_nodes)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        prefixer.flush()
    ctx.exit(first_failure(codes))


def _ports(text: str) -> tuple[int, int]:
    local, _, remote = text.partition(":")
    try:
        ports = int(local), int(remote or local)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not PORT or LOCAL:REMOTE") from None
    if not (0 <= ports[0] <= 65535 and 0 < ports[1] <= 65535):
        raise click.BadParameter(f"{text!r}: ports are 1..65535 (LOCAL may be 0: any free port)")
    return ports


@click.command("port-forward")
@click.argument("address")
@click.argument("ports", metavar="LOCAL[:REMOTE]")
@NODE
@STATE
def port_forward(address: str, ports: str, node: int, state_url: str | None) -> None:
    """Forward 127.0.0.1:LOCAL to a port on a cluster's node (Jupyter, TensorBoard) until
    Ctrl-C. REMOTE defaults to LOCAL; LOCAL 0 picks a free port."""
    local, remote = _ports(ports)
    handle, iact = _resolve(address, state_url)
    try:
        check_node(handle, node)
        iact.touch(handle)
        forward = PortForward(
            lambda: iact.connect(handle, node, remote),
            local,
            Activity(lambda: iact.touch(handle)),
            log=lambda message: click.echo(f"Error: {message}", err=True),
        )
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"Forwarding 127.0.0.1:{forward.port} -> {handle.address} node {node} port {remote}; "
        "Ctrl-C to stop."
    )
    sys.stdout.flush()
    _exits_on(signal.SIGTERM, signal.SIGHUP)
    with contextlib.suppress(KeyboardInterrupt):
        forward.serve()


@click.command("ssh-config")
@click.option(
    "--install",
    is_flag=True,
    help="Add an Include line for Skyform's config at the top of ~/.ssh/config.",
)
@STATE
def ssh_config(install: bool, state_url: str | None) -> None:
    """Write Skyform's SSH config (a Host per cluster node: `ssh dev`, `dev-worker1`, VS Code
    Remote-SSH, rsync); with --install, include it from ~/.ssh/config."""
    home = skyform_home()
    try:
        with open_state(state_url, None) as store:
            path = write_ssh_config(home, store.list_resources())
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Wrote {path}")
    user_config = Path.home() / ".ssh" / "config"
    line = include_line(home)
    if install:
        added = install_include(home, user_config)
        click.echo(f"{'Added' if added else 'Already there'}: {line} ({user_config})")
    elif not (user_config.exists() and line in user_config.read_text().splitlines()):
        click.echo(
            f"To reach clusters by name, add this line at the top of {user_config}\n"
            f"(or run `skyform ssh-config --install`):\n  {line}"
        )


@click.command("ssh-proxy", hidden=True)
@click.argument("address")
@NODE
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.pass_context
def ssh_proxy(ctx: click.Context, address: str, node: int, home: Path | None) -> None:
    """The ProxyCommand of Skyform's SSH config: speaks SSH on stdin/stdout to the node."""
    home = home or skyform_home()
    _exits_on(signal.SIGTERM, signal.SIGHUP)  # ssh hangs up its proxy when it is done
    try:
        handle = target_handle(home, address)
        iact = for_provider(handle.provider, home)
        check_node(handle, node)
        iact.touch(handle)
        with keep_active(Activity(lambda: iact.touch(handle))):
            code = iact.serve_ssh(handle, node)
    except SkyformError as exc:
        raise click.ClickException(f"skyform ssh-proxy: {exc}") from exc
    ctx.exit(code)
