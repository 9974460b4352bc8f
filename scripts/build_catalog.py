#!/usr/bin/env python3
"""Build the shipped price catalog (planner/data/) from SkyPilot-format catalog CSVs.

Usage: python scripts/build_catalog.py [INPUT_DIR] [--out DIR]   (with the venv active)
INPUT_DIR defaults to ../shared/catalog relative to the repository root. The column set is
planner.catalog.COLUMNS, which the loader checks. The output is deterministic (same input bytes
give the same output bytes), so a test can rebuild and compare.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from planner.catalog import COLUMNS, SHIPPED_CLOUDS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO_ROOT.parent / "shared" / "catalog"
DEFAULT_OUTPUT = REPO_ROOT / "planner" / "data"

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
CLOUDS = SHIPPED_CLOUDS
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
    gpu_info = gpu_info.strip()
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


def _text(value: str) -> str:
    return value.strip()


# Where each column of planner.catalog.COLUMNS comes from in a SkyPilot catalog row.
_FROM_SKYPILOT: dict[str, tuple[str, Callable[[str], str]]] = {
    "instance_type": ("InstanceType", _text),
    "accelerator": ("AcceleratorName", _text),
    "acc_count": ("AcceleratorCount", _num),
    "vcpus": ("vCPUs", _num),
    "memory_gib": ("MemoryGiB", _num),
    "gpu_mem_gib": ("GpuInfo", _gpu_mem_gib),
    "price": ("Price", _num),
    "spot_price": ("SpotPrice", _num),
    "region": ("Region", _text),
    "zone": ("AvailabilityZone", _text),
    "arch": ("Arch", _text),
}
_CONVERTERS = tuple(_FROM_SKYPILOT[column] for column in COLUMNS)


def _normalize(cloud: str, row: dict[str, str]) -> tuple[str, ...]:
    get = row.get
    return tuple(convert(get(name) or "") for name, convert in _CONVERTERS)


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
