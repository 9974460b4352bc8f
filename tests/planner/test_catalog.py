"""The shipped catalog: rebuilt byte for byte from the shared CSVs, parsed faithfully, indexed."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from planner.catalog import (
    Catalog,
    CatalogError,
    load_shipped_catalog,
    parse_catalog,
    parse_cloud_csv,
)

ROOT = Path(__file__).resolve().parents[2]
CATALOG_SRC = ROOT.parent / "shared" / "catalog"
DATA = ROOT / "planner" / "data"
needs_shared = pytest.mark.skipif(
    not CATALOG_SRC.is_dir(), reason="shared catalog (../shared/catalog) is not present"
)

HEADER = (
    "instance_type,accelerator,acc_count,vcpus,memory_gib,gpu_mem_gib,"
    "price,spot_price,region,zone,arch\n"
)


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_catalog", ROOT / "scripts" / "build_catalog.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_shipped_catalog(["aws", "gcp"])


@needs_shared
def test_rebuild_reproduces_shipped_files() -> None:
    built = _build_script().build(CATALOG_SRC)
    shipped_names = sorted(p.name for p in DATA.iterdir() if p.is_file())
    assert sorted(built) == shipped_names
    for name, data in built.items():
        on_disk = (DATA / name).read_bytes()
        if name.endswith(".gz"):
            # Compare the payload first so a mismatch shows which rows differ, not gzip noise.
            assert gzip.decompress(data) == gzip.decompress(on_disk), name
        assert data == on_disk, f"{name}: rerun scripts/build_catalog.py"


def test_metadata_names_every_source() -> None:
    meta = json.loads((DATA / "catalog-meta.json").read_bytes())
    for cloud in ("aws", "gcp", "lambda", "runpod", "common"):
        src = meta["sources"][cloud]
        assert src["repository"] and src["version"] and len(src["input_sha256"]) == 64
    assert "A100-80GB" in meta["accelerators"]


@needs_shared
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_every_source_row_is_shipped_unchanged(cloud: str, shipped: Catalog) -> None:
    with (CATALOG_SRC / cloud / "vms.csv").open(newline="") as handle:
        raw = list(csv.DictReader(handle))
    rows = shipped.clouds[cloud].rows
    assert len(rows) == len(raw)

    def num(text: str) -> float | None:
        return float(text) if text else None

    for src, row in zip(raw, rows, strict=True):
        assert row.instance_type == src["InstanceType"]
        assert row.accelerator == src["AcceleratorName"]
        assert row.acc_count == (num(src["AcceleratorCount"]) or 0.0)
        assert (row.vcpus, row.memory_gib) == (num(src["vCPUs"]), num(src["MemoryGiB"]))
        assert (row.price, row.spot_price) == (num(src["Price"]), num(src["SpotPrice"]))
        assert (row.region, row.zone) == (src["Region"], src["AvailabilityZone"])


def test_parse_plain_and_gzip_give_the_same_rows() -> None:
    text = (
        HEADER
        + "p3.2xlarge,V100,1,8,61,16,3.06,0.9,us-east-1,use1-az1,x86_64\n"
        + ",T4,1,,,,0.35,0.11,us-central1,us-central1-a,\n"
    )
    plain = parse_cloud_csv("x", text.encode())
    zipped = parse_cloud_csv("x", gzip.compress(text.encode()))
    assert plain.rows == zipped.rows
    assert plain.instance_types() == ("p3.2xlarge",)
    # Accelerator lookups ignore case, like SkyPilot's fullmatch(case=False).
    assert [r.instance_type for r in plain.accelerator_rows("v100")] == ["p3.2xlarge"]
    gpu_row = plain.accelerator_rows("T4")[0]
    assert gpu_row.instance_type == "" and gpu_row.vcpus is None and gpu_row.price_for(True) == 0.11


def test_parse_rejects_wrong_header_and_bad_numbers() -> None:
    with pytest.raises(CatalogError, match="header"):
        parse_cloud_csv("x", b"InstanceType,Price\nm5.large,0.1\n")
    with pytest.raises(CatalogError, match="not a number"):
        parse_cloud_csv("x", (HEADER + "m5.large,,,2,8,,cheap,,us-east-1,,\n").encode())
    with pytest.raises(CatalogError, match="expected 11 fields"):
        parse_cloud_csv("x", (HEADER + "m5.large,2\n").encode())


def test_canonical_accelerator_names() -> None:
    text = HEADER + "g5.xlarge,A10G,1,4,16,24,1.0,0.3,us-east-1,use1-az1,x86_64\n"
    catalog = parse_catalog(
        {"aws": text.encode()}, json.dumps({"accelerators": {"L40S": []}}).encode()
    )
    assert catalog.canonical_accelerator("a10g") == "A10G"
    assert catalog.canonical_accelerator("l40s") == "L40S"  # from the metadata's list
    assert catalog.canonical_accelerator("Unknown-X") == "Unknown-X"
    assert catalog.cloud("AWS") is catalog.cloud("aws")


def test_shipped_catalog_indexes(shipped: Catalog) -> None:
    gcp = shipped.clouds["gcp"]
    # GCP keeps host rows and accelerator rows apart: GPU rows have no instance type.
    assert all(r.instance_type == "" for r in gcp.accelerator_rows("A100"))
    assert all(r.accelerator == "" for r in gcp.instance_rows("a2-highgpu-1g"))
    aws = shipped.clouds["aws"]
    assert {r.accelerator for r in aws.instance_rows("p4d.24xlarge")} == {"A100"}
    assert all(r.zone.count("-az") == 1 for r in aws.instance_rows("p4d.24xlarge"))  # zone IDs
