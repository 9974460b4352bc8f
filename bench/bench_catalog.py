"""Catalog load time and optimizer throughput, with ratios against baselines in this process.

Baselines: parsing SkyPilot's raw vms.csv files with the csv module into typed tuples (what a
pandas-free loader without the shipped normalized files would do).
Run: python bench/bench_catalog.py
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.catalog import CatalogRow, CloudCatalog, load_shipped_catalog  # noqa: E402
from planner.optimizer import optimize  # noqa: E402
from planner.placement_types import Amount, Request  # noqa: E402

RAW = ROOT.parent / "shared" / "catalog"


def _best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _raw_parse() -> int:
    def num(text: str) -> float | None:
        return float(text) if text else None

    count = 0
    for cloud in ("aws", "gcp"):
        with (RAW / cloud / "vms.csv").open(newline="") as handle:
            for r in csv.DictReader(handle):
                _ = (r["InstanceType"], r["AcceleratorName"], num(r["AcceleratorCount"]),
                     num(r["vCPUs"]), num(r["MemoryGiB"]), num(r["Price"]),
                     num(r["SpotPrice"]), r["Region"], r["AvailabilityZone"])  # fmt: skip
                count += 1
    return count


def _raw_to_catalog() -> int:
    """The same end product as the shipped loader (typed rows + indexes), from the raw CSVs."""

    def num(text: str) -> float | None:
        return float(text) if text else None

    total = 0
    for cloud in ("aws", "gcp"):
        with (RAW / cloud / "vms.csv").open(newline="") as handle:
            rows = [
                CatalogRow(
                    cloud,
                    r["InstanceType"],
                    r["AcceleratorName"],
                    num(r["AcceleratorCount"]) or 0.0,
                    num(r["vCPUs"]),
                    num(r["MemoryGiB"]),
                    None,
                    num(r["Price"]),
                    num(r["SpotPrice"]),
                    r["Region"],
                    r["AvailabilityZone"],
                    r.get("Arch", ""),
                )
                for r in csv.DictReader(handle)
            ]
        total += len(CloudCatalog.from_rows(cloud, rows).rows)
    return total


def main() -> None:
    load = _best_of(lambda: load_shipped_catalog(["aws", "gcp"]))
    print(f"load shipped catalog (aws+gcp): {load * 1000:.0f} ms")
    if RAW.is_dir():
        raw = _best_of(_raw_parse)
        print(f"baseline raw CSV parse (aws+gcp, csv module, no index): {raw * 1000:.0f} ms")
        print(f"ratio shipped/raw parse: {load / raw:.2f}x")
        same = _best_of(_raw_to_catalog)
        print(f"baseline raw CSV -> same typed rows + indexes: {same * 1000:.0f} ms")
        print(f"ratio shipped/raw-equivalent: {load / same:.2f}x")
    catalog = load_shipped_catalog(["aws", "gcp"])
    requests = {
        "single accelerator (A100:1)": [Request(accelerator="A100")],
        "single accelerator spot (V100:1)": [Request(accelerator="V100", use_spot=True)],
        "default cpu (8+)": [Request()],
        "cpus 4+ memory 16+": [Request(cpus=Amount(4, True), memory=Amount(16, True))],
        "any_of 5 GPUs": [Request(accelerator=a) for a in ("L4", "A10G", "A100", "H100", "T4")],
    }
    for label, options in requests.items():
        optimize(options, 1, ["aws", "gcp"], catalog)  # warm
        samples = []
        for _ in range(30):
            start = time.perf_counter()
            optimize(options, 1, ["aws", "gcp"], catalog)
            samples.append(time.perf_counter() - start)
        median = statistics.median(samples)
        print(f"optimize {label}: median {median * 1000:.2f} ms ({1 / median:,.0f}/s)")


if __name__ == "__main__":
    main()
