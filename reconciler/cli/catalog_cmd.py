"""`skyform show-gpus` (accelerators, counts and prices per infra) and `skyform optimize`
(the ranked placements of task files), both over the shipped catalog.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from planner.catalog import SHIPPED_CLOUDS, Catalog, load_shipped_catalog
from planner.optimizer import optimize
from planner.placement_schema import optimize_task
from planner.placement_types import Placement, PlacementResult, Request
from reconciler.context import skyform_home
from schema.errors import SkyformError, SpecError
from schema.loader import load_task_file

DEFAULT_SEARCH_SPACE = ("aws", "gcp")
# The GPUs `show-gpus` lists without --all, after SkyPilot's "common GPUs" view.
COMMON_GPUS = (
    "A10", "A10G", "A100", "A100-80GB", "B200", "H100", "H100-MEGA", "H200", "L4", "L40S",
    "P100", "T4", "V100", "V100-32GB",
)  # fmt: skip


def register(group: click.Group) -> None:
    group.add_command(show_gpus)
    group.add_command(optimize_cmd)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}".rstrip("0").rstrip(".")


def _count(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class GpuOffer:
    """The cheapest on-demand and spot placement of one accelerator count on one infra."""

    infra: str
    accelerator: str
    count: float
    on_demand: Placement | None
    spot: Placement | None
    gpu_mem_gib: float | None

    def as_dict(self) -> dict[str, object]:
        def one(p: Placement | None) -> dict[str, object] | None:
            if p is None:
                return None
            return {
                "instance_type": p.instance_type,
                "vcpus": p.vcpus,
                "memory_gib": p.memory_gib,
                "region": p.region,
                "zone": p.zone,
                "hourly_cost": round(p.hourly_cost, 6),
            }

        return {
            "infra": self.infra,
            "accelerator": self.accelerator,
            "count": self.count,
            "device_memory_gib": self.gpu_mem_gib,
            "on_demand": one(self.on_demand),
            "spot": one(self.spot),
        }


def gpu_offers(
    catalog: Catalog, clouds: Sequence[str], name_filter: str | None, show_all: bool
) -> list[GpuOffer]:
    """Every (infra, accelerator, count) with its cheapest on-demand and spot placement."""
    offers = []
    for cloud in clouds:
        cat = catalog.cloud(cloud)
        if cat is None:
            continue
        for rows in cat.by_accelerator.values():
            name = rows[0].accelerator
            if not _wanted(name, name_filter, show_all):
                continue
            counts = sorted({r.acc_count for r in rows})
            mem = next((r.gpu_mem_gib for r in rows if r.gpu_mem_gib), None)
            for count in counts:
                req = Request(accelerator=name, accelerator_count=count)
                best = optimize([req], 1, [cloud], catalog).choice
                spot_req = Request(accelerator=name, accelerator_count=count, use_spot=True)
                spot = optimize([spot_req], 1, [cloud], catalog).choice
                if best or spot:
                    offers.append(GpuOffer(cloud, name, count, best, spot, mem))
    offers.sort(key=lambda o: (o.accelerator.lower(), o.count, o.infra))
    return offers


def _wanted(name: str, name_filter: str | None, show_all: bool) -> bool:
    if name_filter is not None:
        return name_filter.lower() in name.lower()
    if show_all:
        return True
    return name in COMMON_GPUS


def _summary_table(offers: Sequence[GpuOffer]) -> Table:
    table = Table(title="Accelerators (cheapest per infra; $/h for the smallest count)")
    for col in ("ACCELERATOR", "INFRA", "QUANTITIES", "ON-DEMAND $/h", "SPOT $/h"):
        table.add_column(col)
    groups: dict[tuple[str, str], list[GpuOffer]] = {}
    for offer in offers:
        groups.setdefault((offer.accelerator, offer.infra), []).append(offer)
    for (name, infra), group in groups.items():
        first = group[0]
        table.add_row(
            name,
            infra,
            ", ".join(_count(o.count) for o in group),
            _money(first.on_demand.hourly_cost if first.on_demand else None),
            _money(first.spot.hourly_cost if first.spot else None),
        )
    return table


def _detail_table(offers: Sequence[GpuOffer]) -> Table:
    table = Table(title="Offers (cheapest instance type per count and infra)")
    for col in (
        "ACCELERATOR", "COUNT", "INFRA", "INSTANCE", "vCPUs", "MEM(GiB)", "DEVICE MEM",
        "ON-DEMAND $/h", "REGION", "SPOT $/h", "SPOT ZONE",
    ):  # fmt: skip
        table.add_column(col)
    for o in offers:
        base = o.on_demand or o.spot
        assert base is not None  # gpu_offers keeps only offers with a placement
        table.add_row(
            o.accelerator,
            _count(o.count),
            o.infra,
            base.instance_type,
            "-" if base.vcpus is None else f"{base.vcpus:g}",
            "-" if base.memory_gib is None else f"{base.memory_gib:g}",
            "-" if o.gpu_mem_gib is None else f"{o.gpu_mem_gib:g}GB",
            _money(o.on_demand.hourly_cost if o.on_demand else None),
            (o.on_demand.region or "-") if o.on_demand else "-",
            _money(o.spot.hourly_cost if o.spot else None),
            (o.spot.zone or o.spot.region or "-") if o.spot else "-",
        )
    return table


@click.command("show-gpus")
@click.argument("accelerator", required=False)
@click.option("--infra", "infras", multiple=True, help="Only this cloud (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="Every accelerator, TPUs included.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def show_gpus(accelerator: str | None, infras: tuple[str, ...], show_all: bool, fmt: str) -> None:
    """List accelerators, their counts and cheapest on-demand/spot price per infra; for
    `--infra kubernetes[/context]`, the GPUs of the cluster: total and free per type."""
    kube = tuple(i for i in infras if i.split("/")[0].lower() in KUBERNETES_NAMES)
    if kube:
        _show_kubernetes_gpus(kube, accelerator, fmt)
        infras = tuple(i for i in infras if i not in kube)
        if not infras:
            return
    clouds = tuple(i.split("/")[0].lower() for i in infras) or SHIPPED_CLOUDS
    unknown = [c for c in clouds if c not in SHIPPED_CLOUDS]
    if unknown:
        raise click.UsageError(
            f"no catalog for {', '.join(unknown)}; known: {', '.join(SHIPPED_CLOUDS)}"
        )
    catalog = load_shipped_catalog(clouds)
    offers = gpu_offers(catalog, clouds, accelerator, show_all)
    if fmt == "json":
        click.echo(json.dumps([o.as_dict() for o in offers], indent=2))
        return
    if not offers:
        what = f"matching {accelerator!r} " if accelerator else ""
        raise click.ClickException(f"no accelerator {what}in the catalog of {', '.join(clouds)}")
    table = _detail_table(offers) if accelerator else _summary_table(offers)
    Console().print(table)


KUBERNETES_NAMES = ("kubernetes", "k8s")


def kubernetes_gpus(infras: Sequence[str]) -> list[dict[str, object]]:
    """Per context and GPU type: total and free GPUs, from the cluster's nodes and pods
    (`kubernetes` alone: the kubeconfig's current context)."""
    contexts = [{"context": i.partition("/")[2] or None} for i in infras]
    try:
        from applier.providers import kubernetes as k8s  # imports the SDK: only when asked
    except ImportError as exc:
        raise click.ClickException(
            f"kubernetes: {exc}; install it with `pip install 'skyform[kubernetes]'`"
        ) from None
    reason = k8s.check({"contexts": contexts})
    if reason:
        raise click.ClickException(reason)
    try:
        return k8s.gpu_availability({"contexts": contexts}, skyform_home())
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from None


def _show_kubernetes_gpus(infras: Sequence[str], name_filter: str | None, fmt: str) -> None:
    rows = [
        r
        for r in kubernetes_gpus(infras)
        if name_filter is None or name_filter.lower() in str(r["accelerator"]).lower()
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Kubernetes GPUs (free = allocatable minus Running/Pending pods' requests)")
    for col in ("CONTEXT", "GPU", "REQUESTABLE QTY PER NODE", "FREE", "TOTAL", "NODES"):
        table.add_column(col)
    for r in rows:
        per_node = r["requestable_per_node"]
        assert isinstance(per_node, list)
        table.add_row(
            str(r["context"]), str(r["accelerator"]), ", ".join(str(n) for n in per_node),
            str(r["free"]), str(r["total"]), str(r["nodes"]),
        )  # fmt: skip
    Console().print(table)
    if not rows:
        click.echo("no GPUs found in the cluster (no node carries a GPU label and nvidia.com/gpu)")


def _task_entries(path: Path, space: Sequence[str], catalog: Catalog) -> list[dict[str, object]]:
    try:
        task_file = load_task_file(path)
    except SpecError as exc:
        return [{"file": str(path), "task": None, "error": str(exc), "candidates": []}]
    entries: list[dict[str, object]] = []
    for index, loaded in enumerate(task_file.tasks):
        result: PlacementResult = optimize_task(loaded.task, space, catalog)
        entries.append(
            {
                "file": str(path),
                "task": loaded.task.name or (index if len(task_file.tasks) > 1 else None),
                "num_nodes": loaded.task.num_nodes,
                "reason": result.reason,
                "reason_code": result.reason_code,
                "candidates": [p.as_dict() for p in result.candidates],
            }
        )
    return entries


def _placement_row(entry: dict[str, object]) -> list[str]:
    candidates = entry["candidates"]
    assert isinstance(candidates, list)
    task = "" if entry.get("task") is None else str(entry["task"])
    name = Path(str(entry["file"])).name
    if not candidates:
        return [name, task, "-", "-", "-", "-", "-", "[red]infeasible[/red]"]
    c = candidates[0]
    infra = "/".join(str(p) for p in (c["cloud"], c["region"], c["zone"]) if p)
    accs = c["accelerators"] or {}
    assert isinstance(accs, dict)
    acc_text = ", ".join(f"{k}:{v}" for k, v in accs.items()) or "-"
    return [
        name,
        task,
        str(c["num_nodes"]),
        infra,
        str(c["instance_type"]),
        acc_text,
        "yes" if c["use_spot"] else "no",
        _money(float(str(c["hourly_cost"]))),
    ]


@click.command("optimize")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--infra", "infras", multiple=True, help="Search-space entry, e.g. aws or gcp/us-central1."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def optimize_cmd(files: tuple[Path, ...], infras: tuple[str, ...], fmt: str) -> None:
    """Show where each task file would run (the cheapest feasible placement) and its $/h."""
    space = infras or DEFAULT_SEARCH_SPACE
    clouds = sorted({s.split("/")[0].lower() for s in space} & set(SHIPPED_CLOUDS))
    catalog = load_shipped_catalog(clouds)
    try:
        entries = [e for path in files for e in _task_entries(path, space, catalog)]
    except ValueError as exc:  # a malformed --infra entry
        raise click.UsageError(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
    else:
        table = Table(title=f"Placements (search space: {', '.join(space)})")
        for col in ("FILE", "TASK", "NODES", "INFRA", "INSTANCE", "ACCELERATORS", "SPOT", "$/h"):
            table.add_column(col)
        for entry in entries:
            table.add_row(*_placement_row(entry))
        console = Console()
        console.print(table)
        for entry in entries:
            why = entry.get("error") or entry.get("reason")
            if not entry["candidates"] and why:
                console.print(f"{entry['file']}: {why}", markup=False, highlight=False)
    if any(not e["candidates"] for e in entries):
        raise SystemExit(1)
