"""`skyform show-gpus` and `skyform optimize` end to end, checked against the raw shared CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main

CATALOG_SRC = Path(__file__).resolve().parents[2].parent / "shared" / "catalog"
needs_shared = pytest.mark.skipif(
    not CATALOG_SRC.is_dir(), reason="shared catalog (../shared/catalog) is not present"
)


def _raw(cloud: str) -> list[dict[str, str]]:
    with (CATALOG_SRC / cloud / "vms.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@needs_shared
def test_show_gpus_gcp_a100_8_is_host_plus_gpu_at_the_cheapest_zone() -> None:
    code, out = _run("show-gpus", "A100", "--infra", "gcp", "--format", "json")
    assert code == 0, out
    offers = json.loads(out)
    assert offers and all(
        o["infra"] == "gcp" and "a100" in o["accelerator"].lower() for o in offers
    )
    a100_8 = next(o for o in offers if o["accelerator"] == "A100" and o["count"] == 8)
    # Independently: min over zones of (a2-highgpu-8g host row + A100:8 GPU row).
    rows = _raw("gcp")
    host = {
        r["AvailabilityZone"]: float(r["Price"])
        for r in rows
        if r["InstanceType"] == "a2-highgpu-8g"
    }
    gpu = {
        r["AvailabilityZone"]: float(r["Price"])
        for r in rows
        if r["AcceleratorName"] == "A100" and r["AcceleratorCount"] in ("8", "8.0")
    }
    expected = min(host[z] + gpu[z] for z in host.keys() & gpu.keys())
    assert a100_8["on_demand"]["instance_type"] == "a2-highgpu-8g"
    assert a100_8["on_demand"]["hourly_cost"] == pytest.approx(expected)
    assert a100_8["spot"]["hourly_cost"] < a100_8["on_demand"]["hourly_cost"]


def test_show_gpus_summary_lists_common_gpus_and_all_adds_tpus() -> None:
    code, out = _run("show-gpus", "--infra", "gcp", "--format", "json")
    assert code == 0, out
    names = {o["accelerator"] for o in json.loads(out)}
    assert "H100" in names and not any(n.startswith("tpu-") for n in names)
    code, out = _run("show-gpus", "--infra", "gcp", "--all", "--format", "json")
    assert any(o["accelerator"].startswith("tpu-") for o in json.loads(out))
    code, text = _run("show-gpus", "--infra", "aws")
    assert code == 0 and "A10G" in text


def test_show_gpus_rejects_unknown_infra() -> None:
    code, out = _run("show-gpus", "--infra", "nosuchcloud")
    assert code == 2 and "no catalog" in out


@needs_shared
def test_optimize_json_matches_the_cheapest_aws_row(tmp_path: Path) -> None:
    task = tmp_path / "train.yaml"
    task.write_text("name: train\nresources:\n  accelerators: V100:1\nnum_nodes: 2\nrun: echo hi\n")
    code, out = _run("optimize", str(task), "--infra", "aws", "--format", "json")
    assert code == 0, out
    [entry] = json.loads(out)
    assert entry["file"] == str(task) and entry["task"] == "train" and entry["reason"] is None
    first = entry["candidates"][0]
    assert first["cloud"] == "aws" and first["accelerators"] == {"V100": 1}
    cheapest = min(
        float(r["Price"])
        for r in _raw("aws")
        if r["AcceleratorName"] == "V100" and float(r["AcceleratorCount"] or 0) == 1
    )
    assert first["hourly_cost"] == pytest.approx(2 * cheapest)  # two nodes
    costs = [c["hourly_cost"] for c in entry["candidates"]]
    assert costs == sorted(costs)


def test_optimize_reports_infeasible_tasks_and_load_errors(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s.yaml"
    k8s.write_text("resources:\n  infra: k8s\n  cpus: 2\nrun: echo\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("resources:\n  spot_recovery: failover\nrun: echo\n")
    code, out = _run("optimize", str(k8s), str(broken), "--format", "json")
    assert code == 1
    k8s_entry, broken_entry = json.loads(out)
    assert k8s_entry["reason_code"] == "infra-not-enabled" and not k8s_entry["candidates"]
    assert "spot_recovery" in broken_entry["error"]


def test_optimize_text_shows_the_choice(tmp_path: Path) -> None:
    task = tmp_path / "cpu.yaml"
    task.write_text("resources:\n  cpus: 4+\n  infra: gcp\nrun: echo\n")
    code, out = _run("optimize", str(task))
    assert code == 0, out
    assert "gcp/" in out and "cpu.yaml" in out
