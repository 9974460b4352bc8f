#!/usr/bin/env python3
"""Build the shipped price catalog (planner/data/) from SkyPilot-format catalog CSVs.

Usage: python scripts/build_catalog.py [INPUT_DIR] [--out DIR]
INPUT_DIR defaults to ../shared/catalog relative to the repository root. The output is
deterministic (same input bytes give the same output bytes), so a test can rebuild and compare.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO_ROOT.parent / "shared" / "catalog"
DEFAULT_OUTPUT = REPO_ROOT / "planner" / "data"

# One normalized column set for every cloud. GCP keeps host rows (instance_type set, no
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

# Where each input comes from (facts copied from shared/catalog/README.md); the project README
# cites these through planner/data/catalog-meta.json.
SOURCES = {
    "aws": (
        "skypilot-org/skypilot-catalog",
        "catalogs/v8/aws/vms.csv",
        "stored version e385a0d3",
    ),
    "gcp": (
        "anycloud-sh/catalog",
        "gcp/vms.csv (a daily refresh of SkyPilot's GCP catalog)",
        'commit 62ff0a98 "Update catalogs 2026-05-20"',
    ),
    "azure": (
        "anycloud-sh/catalog",
        "azure/vms.csv",
        'commit 62ff0a98 "Update catalogs 2026-05-20"',
    ),
    "lambda": (
        "skypilot-org/skypilot-catalog",
        "catalogs/v8/lambda/vms.csv",
        "stored version 0f407038",
    ),
    "runpod": (
        "skypilot-org/skypilot-catalog",
        "catalogs/v8/runpod/vms.csv (subset: 1x-3x A100-80GB secure)",
        "stored version 46062acb",
    ),
    "common": (
        "skypilot-org/skypilot-catalog",
        "catalogs/v8/common/accelerators.csv",
        "stored version d4d53f0e",
    ),
}
CLOUDS = ("aws", "gcp", "azure", "lambda", "runpod")
LICENSE = "Prices are facts published by the clouds; SkyPilot's catalog repository is Apache-2.0."


def _num(text: str) -> str:
    """Canonical text for a number: '' for missing, no trailing '.0' on integers."""
    text = text.strip()
    if not text:
        return ""
    value = float(text)
    if value != value:  # NaN in the source means "no value"
        return ""
    if value.is_integer():
        return str(int(value))
    return repr(value)


def _gpu_mem_gib(gpu_info: str) -> str:
    """Device memory of one accelerator in GiB, from SkyPilot's Python-literal GpuInfo column."""
    if not gpu_info.startswith("{"):
        return ""  # TPU rows carry the TPU name here, not a dict
    try:
        info = ast.literal_eval(gpu_info)
        mib = float(info["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return ""
    # RunPod's upstream rows write GiB into the SizeInMiB field (80 for an 80 GB card).
    gib = mib if mib < 1024 else mib / 1024
    return _num(str(round(gib, 2)))


def _normalize(cloud: str, row: dict[str, str]) -> tuple[str, ...]:
    get = row.get
    return (
        (get("InstanceType") or "").strip(),
        (get("AcceleratorName") or "").strip(),
        _num(get("AcceleratorCount") or ""),
        _num(get("vCPUs") or ""),
        _num(get("MemoryGiB") or ""),
        _gpu_mem_gib((get("GpuInfo") or "").strip()),
        _num(get("Price") or ""),
        _num(get("SpotPrice") or ""),
        (get("Region") or "").strip(),
        (get("AvailabilityZone") or "").strip(),
        (get("Arch") or "").strip(),
    )


def _read_rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def render_cloud(cloud: str, rows: Iterable[dict[str, str]]) -> bytes:
    """The normalized CSV (uncompressed) for one cloud; rows keep the source order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(_normalize(cloud, row))
    return out.getvalue().encode("utf-8")


def _accelerators(path: Path) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for row in _read_rows(path):
        clouds = ast.literal_eval(row["Clouds"]) if row["Clouds"].strip() else []
        result[row["AcceleratorName"].strip()] = sorted(str(c) for c in clouds)
    return dict(sorted(result.items()))


def build(input_dir: Path) -> dict[str, bytes]:
    """Every output file name -> its bytes. Gzip with mtime 0 keeps the bytes reproducible."""
    files: dict[str, bytes] = {}
    meta: dict[str, object] = {"format": 1, "columns": list(COLUMNS), "license": LICENSE}
    sources: dict[str, object] = {}
    for cloud in CLOUDS:
        src = input_dir / cloud / "vms.csv"
        raw = src.read_bytes()
        payload = render_cloud(cloud, _read_rows(src))
        files[f"{cloud}.csv.gz"] = gzip.compress(payload, compresslevel=9, mtime=0)
        repo, path, version = SOURCES[cloud]
        sources[cloud] = {
            "repository": repo,
            "path": path,
            "version": version,
            "input_sha256": hashlib.sha256(raw).hexdigest(),
            "rows": payload.count(b"\n") - 1,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
    acc_src = input_dir / "common" / "accelerators.csv"
    repo, path, version = SOURCES["common"]
    sources["common"] = {
        "repository": repo,
        "path": path,
        "version": version,
        "input_sha256": hashlib.sha256(acc_src.read_bytes()).hexdigest(),
    }
    meta["sources"] = sources
    meta["accelerators"] = _accelerators(acc_src)
    files["catalog-meta.json"] = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", nargs="?", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        print(f"build_catalog: no catalog directory at {args.input_dir}", file=sys.stderr)
        return 1
    files = build(args.input_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
