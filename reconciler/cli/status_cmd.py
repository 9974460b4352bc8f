"""`skyform status`, `skyform logs`, `skyform cancel`: what runs, what it says, stop a job."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from applier.controllers import common as controllers
from applier.provider import Handle
from applier.refresh import refresh
from reconciler.context import load_desired, open_state, providers
from schema.errors import SkyformError, SpecError
from schema.repo import DesiredState
from state import Resource


def register(group: click.Group) -> None:
    group.add_command(status)
    group.add_command(logs)
    group.add_command(cancel)


def _desired(root: Path) -> DesiredState | None:
    try:
        return load_desired(root, {})
    except SpecError:
        return None


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rows(records: list[Resource], desired: DesiredState | None) -> list[dict[str, Any]]:
    live = refresh(records, providers(desired))
    rows = []
    for r in sorted(records, key=lambda r: r.address):
        seen = live.get(r.address)
        p = r.placement or {}
        infra = "/".join(str(x) for x in (p.get("cloud"), p.get("region"), p.get("zone")) if x)
        accs = ", ".join(f"{k}:{v:g}" for k, v in (p.get("accelerators") or {}).items())
        resources = " ".join(
            x for x in (f"{p.get('num_nodes', 1)}x", p.get("instance_type"), accs) if x
        )
        rows.append(
            {
                "address": r.address,
                "kind": r.kind,
                "status": seen.status if seen else r.status,
                "infra": infra or None,
                "resources": resources if p else None,
                "cost_per_hour": p.get("hourly_cost", 0.0),
                "age": _age(r.created_at),
                "endpoint": (seen.endpoint if seen else None) or (r.handles or {}).get("endpoint"),
                "drift": seen.drift if seen else None,
                "ready_replicas": seen.ready_replicas if seen else None,
                "connect": f"skyform ssh {r.address}" if r.kind == "cluster" else None,
            }
        )
    return rows


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--repo", "root", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--state", "state_url", metavar="URL")
def status(fmt: str, root: Path, state_url: str | None) -> None:
    """Clusters, jobs and services Skyform runs, like `sky status`."""
    desired = _desired(root)
    try:
        with open_state(state_url, desired) as store:
            rows = _rows(store.list_resources(), desired)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("Nothing is running. Run `skyform apply` in an infra repo.")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("ADDRESS", "STATUS", "INFRA", "RESOURCES", "$/H", "AGE", "ENDPOINT", "CONNECT"):
        table.add_column(col)
    for row in rows:
        state = row["status"] + (f" ({row['drift']})" if row["drift"] else "")
        table.add_row(
            row["address"],
            state,
            row["infra"] or "-",
            row["resources"] or "-",
            f"{row['cost_per_hour']:.2f}",
            row["age"],
            row["endpoint"] or "-",
            row["connect"] or "-",
        )
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


def _path(entry: Any) -> Path:
    """A job controller lists logs as {"rank", "stage", "path"}; plain paths are accepted too."""
    return Path(entry["path"] if isinstance(entry, dict) else entry)


def _log_files(record: Resource) -> list[Path]:
    handles = record.handles or {}
    files: list[Path] = []
    if record.kind == "cluster" and handles.get("handle"):
        handle = Handle.from_dict(handles["handle"])
        provider = providers(None).get(handle.provider)
        if provider is not None:
            files = [Path(f.path) for f in provider.log_paths(handle)]
    elif handles.get("controller"):
        directory = Path(handles["controller"])
        st = controllers.read_status(directory)
        files = [_path(p) for p in st.get("log_paths") or []]
        for replica in st.get("replicas") or []:
            handle = replica.get("handle")
            provider = providers(None).get((handle or {}).get("provider", ""))
            if handle and provider is not None:
                files.extend(Path(f.path) for f in provider.log_paths(Handle.from_dict(handle)))
        files.append(directory / "controller.log")
    return [f for f in files if f.exists()]


@click.command()
@click.argument("address")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the logs grow.")
@click.option("--state", "state_url", metavar="URL")
def logs(address: str, follow: bool, state_url: str | None) -> None:
    """Print the logs of a cluster, job or service (setup and run, every node)."""
    with open_state(state_url, None) as store:
        record = store.get_resource(address)
    if record is None:
        raise click.ClickException(f"{address} is not in the state; see `skyform status`")
    offsets: dict[Path, int] = {}
    while True:
        for path in _log_files(record):
            start = offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(start)
                chunk = f.read()
            if chunk:
                if start == 0:
                    click.echo(f"==> {path} <==")
                click.echo(chunk.decode(errors="replace"), nl=False)
                offsets[path] = start + len(chunk)
        if not follow:
            return
        time.sleep(1.0)


@click.command()
@click.argument("address")
@click.option("--state", "state_url", metavar="URL")
def cancel(address: str, state_url: str | None) -> None:
    """Cancel a managed job (its compute is torn down; its logs stay)."""
    if not address.startswith("job."):
        raise click.ClickException("only jobs can be cancelled; use `skyform destroy ADDR`")
    with open_state(state_url, None) as store:
        record = store.get_resource(address)
        if record is None:
            raise click.ClickException(f"{address} is not in the state")
        directory = (record.handles or {}).get("controller")
        if not directory:
            raise click.ClickException(f"{address} has no controller to cancel")
        controllers.request_cancel(Path(directory))
        controllers.wait_stopped(Path(directory), 60)
        store.add_event(address, "cancel", "cancelled by the user")
    click.echo(f"{address}: cancelled")
