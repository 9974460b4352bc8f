"""`skyform state ...`: inspect and repair the state store (list, show, history, unlock, export,
import)."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from schema.errors import SkyformError
from state import Store, open_store


def register(group: click.Group) -> None:
    group.add_command(state)


def skyform_home() -> Path:
    return Path(os.environ.get("SKYFORM_HOME") or Path.home() / ".skyform").expanduser()


def _open(ctx: click.Context) -> Store:
    url: str | None = ctx.obj
    try:
        store = open_store(url, skyform_home())
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.call_on_close(store.close)
    return store


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No login name in some containers; the lock and event still name the host and pid.
        return "unknown"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@click.group()
@click.option(
    "--state",
    "state_url",
    envvar="SKYFORM_STATE",
    default=None,
    metavar="URL",
    help="State store: sqlite:////abs/path.db, a file path, or postgresql://... "
    "(default: SQLite at $SKYFORM_HOME/state.db).",
)
@click.pass_context
def state(ctx: click.Context, state_url: str | None) -> None:
    """Inspect and repair the state store."""
    ctx.obj = state_url


@state.command("list")
@click.option("--kind", default=None, help="Only resources of this kind (cluster, job, service).")
@click.pass_context
def list_cmd(ctx: click.Context, kind: str | None) -> None:
    """List the resources in the state, and the lock if one is held."""
    store = _open(ctx)
    resources = store.list_resources(kind)
    width = max((len(r.address) for r in resources), default=7)
    for r in resources:
        click.echo(f"{r.address:<{width}}  {r.status:<10}  {_when(r.updated_at)}")
    meta = store.meta()
    click.echo(
        f"{len(resources)} resource(s); serial {meta.serial}, lineage {meta.lineage}", err=True
    )
    lock = store.current_lock()
    if lock is not None:
        click.echo(f"locked by {lock.describe()}", err=True)


@state.command()
@click.argument("address")
@click.pass_context
def show(ctx: click.Context, address: str) -> None:
    """Show one resource as JSON."""
    resource = _open(ctx).get_resource(address)
    if resource is None:
        raise click.ClickException(
            f"no resource {address!r} in the state; `skyform state list` shows what there is"
        )
    click.echo(json.dumps(asdict(resource), indent=2, sort_keys=True))


@state.command()
@click.option("--limit", default=20, show_default=True, help="How many runs, newest first.")
@click.pass_context
def history(ctx: click.Context, limit: int) -> None:
    """Show recent plan and apply runs, newest first."""
    runs = _open(ctx).history(limit)
    if not runs:
        click.echo("no runs recorded yet", err=True)
    for run in runs:
        commit = (run.commit or "-")[:12]
        click.echo(
            f"{run.id:>5}  {_when(run.started_at)}  {run.operation:<6}  {run.outcome:<9}  "
            f"{run.who}  {commit}  {run.plan_id or '-'}  {run.message}".rstrip()
        )


@state.command()
@click.argument("lock_id")
@click.pass_context
def unlock(ctx: click.Context, lock_id: str) -> None:
    """Break the state lock LOCK_ID (when its holder is gone)."""
    store = _open(ctx)
    lock = store.current_lock()
    if lock is None:
        raise click.ClickException("the state is not locked; nothing to unlock")
    if lock.lock_id != lock_id:
        raise click.ClickException(
            f"lock id {lock_id} does not match the current lock: {lock.describe()}"
        )
    if not store.release_lock(lock_id):
        raise click.ClickException(f"lock {lock_id} was released meanwhile; nothing to unlock")
    store.add_event("state", "unlock", f"{_who()} broke the lock {lock.describe()}")
    click.echo(f"unlocked: {lock.describe()}")


@state.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.pass_context
def export_cmd(ctx: click.Context, file: Path) -> None:
    """Write the whole state as a JSON document to FILE ('-' for stdout)."""
    document = _open(ctx).export_state()
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if str(file) == "-":
        sys.stdout.write(text)
        return
    # Written beside the target and renamed, so a reader never sees half a document.
    partial = file.with_name(file.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(file)
    click.echo(f"exported serial {document['serial']} to {file}", err=True)


@state.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--force", is_flag=True, help="Import even an older serial or a different lineage.")
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, force: bool) -> None:
    """Replace the state with the JSON document in FILE ('-' for stdin)."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        document: Any = json.loads(text)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read a state document from {file}: {exc}") from exc
    store = _open(ctx)
    try:
        lock = store.acquire_lock(_who(), "state import", ttl=300)
        try:
            meta = store.import_state(document, force=force, lock_id=lock.lock_id)
        finally:
            store.release_lock(lock.lock_id)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {file}: serial {meta.serial}, lineage {meta.lineage}")
