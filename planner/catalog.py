"""The price catalog: rows per cloud indexed by instance type and accelerator, and its loaders.

Parsing is a pure function of bytes; only `load_shipped_catalog` reads the packaged files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from itertools import repeat
from typing import NamedTuple

SHIPPED_CLOUDS = ("aws", "gcp", "azure", "lambda", "runpod")
# The header of every shipped catalog file, written by scripts/build_catalog.py: one
# normalized column set for every cloud. GCP keeps host rows (instance_type set, no
# accelerator) and accelerator rows (instance_type empty) apart, because SkyPilot prices a GCP
# GPU VM as host row + accelerator row.
COLUMNS = (
    "instance_type",
    "accelerator",
    "acc_count",
    "vcpus",
    "memory_gib",
    "gpu_mem_gib",
    "price",
    "spot_price",
    "region",
    "zone",
    "arch",
)
_NUMERIC = tuple(
    map(COLUMNS.index, ("acc_count", "vcpus", "memory_gib", "gpu_mem_gib", "price", "spot_price"))
)
_ACC_COUNT = COLUMNS.index("acc_count")


class CatalogError(ValueError):
    """A catalog file is malformed (wrong header, a number that is not one)."""


class CatalogRow(NamedTuple):
    """One offering: an instance type (or, on GCP, an attachable accelerator) in a region/zone.

    A NamedTuple rather than a dataclass: tens of thousands are built at load time and tuples
    are several times cheaper to create. Prices are USD per hour; None means "not offered".
    """

    cloud: str
    instance_type: str  # "" for a GCP accelerator row
    accelerator: str  # "" when the row has none
    acc_count: float
    vcpus: float | None
    memory_gib: float | None
    gpu_mem_gib: float | None
    price: float | None
    spot_price: float | None
    region: str
    zone: str  # AWS keeps zone IDs (use1-az1); "" where the cloud has no zones
    arch: str

    def price_for(self, use_spot: bool) -> float | None:
        return self.spot_price if use_spot else self.price


def _group(rows: Iterable[CatalogRow], key: str) -> dict[str, tuple[CatalogRow, ...]]:
    groups: dict[str, list[CatalogRow]] = {}
    if key == "instance_type":
        for row in rows:
            if row.instance_type:
                groups.setdefault(row.instance_type, []).append(row)
    else:
        for row in rows:
            if row.accelerator:
                groups.setdefault(row.accelerator.lower(), []).append(row)
    return {name: tuple(group) for name, group in groups.items()}


@dataclass(frozen=True)
class CloudCatalog:
    """All rows of one cloud, in source order, with lookup indexes."""

    name: str
    rows: tuple[CatalogRow, ...]
    by_instance: Mapping[str, tuple[CatalogRow, ...]] = field(repr=False)
    # Keyed by lower-case accelerator name: SkyPilot matches accelerator names ignoring case.
    by_accelerator: Mapping[str, tuple[CatalogRow, ...]] = field(repr=False)

    @classmethod
    def from_rows(cls, name: str, rows: Iterable[CatalogRow]) -> CloudCatalog:
        rows = tuple(rows)
        return cls(name, rows, _group(rows, "instance_type"), _group(rows, "accelerator"))

    def instance_rows(self, instance_type: str) -> tuple[CatalogRow, ...]:
        return self.by_instance.get(instance_type, ())

    def accelerator_rows(self, name: str) -> tuple[CatalogRow, ...]:
        return self.by_accelerator.get(name.lower(), ())

    def instance_types(self) -> tuple[str, ...]:
        """Instance types in order of first appearance in the source."""
        return tuple(self.by_instance)

    def regions(self) -> tuple[str, ...]:
        return tuple(sorted({row.region for row in self.rows}))


@dataclass(frozen=True)
class Catalog:
    """Every loaded cloud, the canonical accelerator names, and where the data came from."""

    clouds: Mapping[str, CloudCatalog]
    # lower-case name -> canonical spelling ("a10g" -> "A10G")
    accelerator_names: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def cloud(self, name: str) -> CloudCatalog | None:
        return self.clouds.get(name.lower())

    def canonical_accelerator(self, name: str) -> str:
        """SkyPilot's canonical spelling of an accelerator name; unknown names are unchanged."""
        return self.accelerator_names.get(name.lower(), name)


def _numbers(cloud: str, column: str, values: Sequence[str]) -> list[float | None]:
    # Prices and sizes repeat across zones, so convert each distinct string once.
    table: dict[str, float | None] = {"": None}
    for text in set(values):
        if text:
            try:
                table[text] = float(text)
            except ValueError:
                raise CatalogError(f"{cloud}: {column} {text!r} is not a number") from None
    return list(map(table.__getitem__, values))


def parse_cloud_csv(cloud: str, data: bytes) -> CloudCatalog:
    """Parse one normalized catalog file (gzip'd or plain CSV bytes) of `cloud`."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    records = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    header = tuple(records[0]) if records else ()
    if header != COLUMNS:
        raise CatalogError(f"{cloud}: unexpected catalog header {header!r}")
    # Column-wise conversion: the load is on every CLI start, so it avoids per-field calls.
    try:
        columns: list[Sequence[object]] = [c[1:] for c in zip(*records, strict=True)]
    except ValueError:
        bad = next(i for i, rec in enumerate(records, start=1) if len(rec) != len(COLUMNS))
        raise CatalogError(f"{cloud}:{bad}: expected {len(COLUMNS)} fields") from None
    for index in _NUMERIC:
        values = _numbers(cloud, COLUMNS[index], columns[index])  # type: ignore[arg-type]
        if index == _ACC_COUNT:
            values = [v or 0.0 for v in values]
        columns[index] = values
    # tuple.__new__ through partial builds each row without a Python-level call frame.
    make = partial(tuple.__new__, CatalogRow)
    rows = map(make, zip(repeat(cloud), *columns, strict=False))
    return CloudCatalog.from_rows(cloud, rows)


def build_catalog(
    clouds: Iterable[CloudCatalog], meta: Mapping[str, object] | None = None
) -> Catalog:
    """Assemble a Catalog; accelerator spellings come from the rows and the metadata's list."""
    cloud_map = {c.name: c for c in clouds}
    names: dict[str, str] = {}
    meta = meta or {}
    listed = meta.get("accelerators", {})
    if isinstance(listed, Mapping):
        for name in listed:
            names.setdefault(str(name).lower(), str(name))
    for cat in cloud_map.values():
        for rows in cat.by_accelerator.values():
            names.setdefault(rows[0].accelerator.lower(), rows[0].accelerator)
    sources = meta.get("sources", {})
    return Catalog(
        clouds=cloud_map,
        accelerator_names=names,
        sources=dict(sources) if isinstance(sources, Mapping) else {},
    )


def parse_catalog(files: Mapping[str, bytes], meta: bytes | None = None) -> Catalog:
    """A Catalog from {cloud: file bytes} and the optional catalog-meta.json bytes."""
    parsed_meta = json.loads(meta) if meta else {}
    return build_catalog((parse_cloud_csv(c, data) for c, data in files.items()), parsed_meta)


def load_shipped_catalog(clouds: Iterable[str] | None = None) -> Catalog:
    """Read the catalog packaged in planner/data (all shipped clouds unless `clouds` is given)."""
    base = resources.files("planner") / "data"
    wanted = SHIPPED_CLOUDS if clouds is None else tuple(c.lower() for c in clouds)
    files = {
        c: (base / f"{c}.csv.gz").read_bytes() for c in wanted if (base / f"{c}.csv.gz").is_file()
    }
    return parse_catalog(files, (base / "catalog-meta.json").read_bytes())
