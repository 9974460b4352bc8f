"""The optimizer: SkyPilot 0.14.1's choice rules on small hand-made catalogs, and agreement with
SkyPilot's own choices for every corpus file (../shared/corpus/skypilot-choices.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.catalog import Catalog, CatalogRow, CloudCatalog, build_catalog, load_shipped_catalog
from planner.optimizer import optimize
from planner.placement_schema import optimize_task
from planner.placement_types import Amount, Blocked, LiveOffering, Request
from schema.loader import load_task_file

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CHOICES = SHARED / "skypilot-choices.jsonl"


def row(cloud: str, itype: str, region: str, zone: str, price: float | None, spot: float | None,
        acc: str = "", count: float = 0.0, cpus: float | None = 8,
        mem: float | None = 32) -> CatalogRow:  # fmt: skip
    return CatalogRow(cloud, itype, acc, count, cpus, mem, None, price, spot, region, zone, "")


def catalog(*rows: CatalogRow) -> Catalog:
    clouds: dict[str, list[CatalogRow]] = {}
    for r in rows:
        clouds.setdefault(r.cloud, []).append(r)
    return build_catalog(CloudCatalog.from_rows(c, rs) for c, rs in clouds.items())


AWS = catalog(
    row("aws", "m6i.2xlarge", "us-east-1", "use1-az1", 0.384, 0.20),
    row("aws", "m6i.2xlarge", "us-east-1", "use1-az2", 0.384, 0.15),
    row("aws", "m6i.2xlarge", "eu-west-1", "euw1-az1", 0.384, 0.10),
    row("aws", "m6i.2xlarge", "us-west-2", "usw2-az1", 0.40, None),
    row("aws", "r5.2xlarge", "us-east-1", "use1-az1", 0.10, 0.05),  # not a default family
    row("aws", "c6i.xlarge", "us-east-1", "use1-az1", 0.17, 0.08, cpus=4, mem=8),
    row("aws", "p3.2xlarge", "us-east-1", "use1-az1", 3.06, 0.90, "V100", 1, 8, 61),
    row("aws", "p3.8xlarge", "us-east-1", "use1-az1", 12.24, 0.50, "V100", 4, 32, 244),
    row("aws", "g4dn.xlarge", "us-east-1", "use1-az1", 0.526, 0.20, "T4", 1, 4, 16),
    row("aws", "g4dn.2xlarge", "us-east-1", "use1-az1", 0.752, 0.25, "T4", 1, 8, 32),
)


def test_default_instance_is_cheapest_in_default_families_expanded_per_region() -> None:
    result = optimize([Request()], 1, ["aws"], AWS)
    # r5 is cheaper but outside SkyPilot's default families; c6i.xlarge has too few vCPUs.
    assert {p.instance_type for p in result.candidates} == {"m6i.2xlarge"}
    # On-demand: one candidate per region; equal prices go US regions first, then by name.
    assert [p.region for p in result.candidates] == ["us-east-1", "eu-west-1", "us-west-2"]
    assert all(p.zone is None for p in result.candidates)


def test_spot_goes_per_zone_and_ranks_by_zone_price() -> None:
    result = optimize([Request(use_spot=True)], 2, ["aws"], AWS)
    assert [(p.zone, p.hourly_cost) for p in result.candidates] == [
        ("euw1-az1", 0.10), ("use1-az2", 0.15), ("use1-az1", 0.20),
    ]  # fmt: skip
    assert result.choice is not None and result.choice.total_hourly_cost == pytest.approx(0.20)


def test_cpus_exact_and_at_least() -> None:
    exact = optimize([Request(cpus=Amount(4), memory=Amount(8, at_least=True))], 1, ["aws"], AWS)
    assert exact.choice is not None and exact.choice.instance_type == "c6i.xlarge"
    plus = optimize([Request(cpus=Amount(5, at_least=True))], 1, ["aws"], AWS)
    assert plus.choice is not None and plus.choice.instance_type == "m6i.2xlarge"
    none = optimize([Request(cpus=Amount(5))], 1, ["aws"], AWS)
    assert none.choice is None and none.reason_code == "no-feasible-offer"


def test_only_the_cheapest_accelerator_instance_type_per_cloud() -> None:
    on_demand = optimize([Request(accelerator="t4")], 1, ["aws"], AWS)
    assert {p.instance_type for p in on_demand.candidates} == {"g4dn.xlarge"}
    assert on_demand.choice is not None and on_demand.choice.accelerator == "T4"
    big = optimize([Request(accelerator="T4", cpus=Amount(8, at_least=True))], 1, ["aws"], AWS)
    assert big.choice is not None and big.choice.instance_type == "g4dn.2xlarge"
    # Spot ranks accelerator instance types by spot price.
    spot = optimize(
        [Request(accelerator="V100", accelerator_count=4, use_spot=True)], 1, ["aws"], AWS
    )
    assert spot.choice is not None and spot.choice.instance_type == "p3.8xlarge"


GCP = catalog(
    row("gcp", "a2-highgpu-1g", "us-central1", "us-central1-a", 1.0, 0.5, cpus=12, mem=85),
    row("gcp", "a2-highgpu-1g", "us-east1", "us-east1-b", 1.2, 0.6, cpus=12, mem=85),
    row("gcp", "", "us-central1", "us-central1-a", 3.0, 1.0, "A100", 1, None, None),
    row("gcp", "", "us-east1", "us-east1-b", 2.5, None, "A100", 1, None, None),
    row("gcp", "n1-standard-4", "us-central1", "us-central1-a", 0.19, 0.04, cpus=4, mem=15),
    row("gcp", "n1-highmem-4", "us-central1", "us-central1-a", 0.24, 0.05, cpus=4, mem=26),
    row("gcp", "n1-standard-8", "us-central1", "us-central1-a", 0.38, 0.08, cpus=8, mem=30),
    row("gcp", "", "us-central1", "us-central1-a", 0.35, 0.07, "T4", 1, None, None),
    row("gcp", "n2-standard-8", "us-central1", "us-central1-a", 0.39, 0.09),
    row("gcp", "n4-standard-8", "us-central1", "us-central1-b", 0.36, 0.10),
)


def test_gcp_gpu_price_is_host_plus_accelerator_per_zone() -> None:
    result = optimize([Request(accelerator="A100")], 1, ["gcp"], GCP)
    got = [(p.zone, p.instance_type, p.hourly_cost) for p in result.candidates]
    assert got == [("us-east1-b", "a2-highgpu-1g", 3.7), ("us-central1-a", "a2-highgpu-1g", 4.0)]
    # No spot price for the GPU row in us-east1: that zone drops out of spot placements.
    spot = optimize([Request(accelerator="A100", use_spot=True)], 1, ["gcp"], GCP)
    assert [(p.zone, p.hourly_cost) for p in spot.candidates] == [("us-central1-a", 1.5)]


def test_gcp_other_gpus_use_n1_hosts_with_default_cpus_and_4gib_per_vcpu() -> None:
    # T4:1 defaults to 4+ vCPUs and 16+ GiB: n1-standard-4 (15 GiB) is too small.
    result = optimize([Request(accelerator="T4")], 1, ["gcp"], GCP)
    assert result.choice is not None
    assert result.choice.instance_type == "n1-highmem-4"
    assert result.choice.hourly_cost == pytest.approx(0.24 + 0.35)


def test_gcp_default_instance_and_region_restricted_search_space() -> None:
    result = optimize([Request()], 1, ["gcp"], GCP)
    assert result.choice is not None and result.choice.instance_type == "n4-standard-8"
    narrowed = optimize([Request()], 1, ["gcp/us-central1"], GCP)
    assert narrowed.choice is not None and narrowed.choice.zone == "us-central1-b"
    zone = optimize([Request()], 1, ["gcp/us-central1/us-central1-a"], GCP)
    assert zone.choice is not None and zone.choice.instance_type == "n2-standard-8"


BOTH = catalog(*(AWS.clouds["aws"].rows + GCP.clouds["gcp"].rows))


def test_ordered_takes_the_first_feasible_entry_any_of_competes() -> None:
    options = [Request(accelerator="K80"), Request(accelerator="V100"), Request(accelerator="T4")]
    ordered = optimize(options, 1, ["aws", "gcp"], BOTH, ordered=True)
    assert ordered.choice is not None and ordered.choice.accelerator == "V100"
    # The later entries follow as the failover order.
    accs = [p.accelerator for p in ordered.candidates]
    assert accs.index("T4") > max(i for i, a in enumerate(accs) if a == "V100")
    any_of = optimize(options, 1, ["aws", "gcp"], BOTH)
    assert any_of.choice is not None and any_of.choice.instance_type == "g4dn.xlarge"
    costs = [p.total_hourly_cost for p in any_of.candidates]
    assert costs == sorted(costs)


def test_blocked_placements_are_skipped_with_wildcards() -> None:
    req = [Request(accelerator="T4")]
    first = optimize(req, 1, ["aws", "gcp"], BOTH).choice
    assert first is not None and first.cloud == "aws"
    blocked = optimize(req, 1, ["aws", "gcp"], BOTH, blocked=[Blocked(cloud="aws")])
    assert blocked.choice is not None and blocked.choice.cloud == "gcp"
    everything = optimize(req, 1, ["aws", "gcp"], BOTH, blocked=[Blocked(accelerator="t4")])
    assert everything.choice is None and everything.reason_code == "all-blocked"


def test_ordered_skips_an_entry_whose_placements_are_all_blocked() -> None:
    options = [Request(accelerator="V100"), Request(accelerator="T4")]
    result = optimize(options, 1, ["aws"], AWS, ordered=True, blocked=[Blocked(accelerator="V100")])
    assert result.choice is not None and result.choice.accelerator == "T4"


def test_infra_outside_the_search_space_is_not_enabled() -> None:
    result = optimize([Request(cloud="kubernetes")], 1, ["aws", "gcp"], BOTH)
    assert result.choice is None and result.reason_code == "infra-not-enabled"
    assert "kubernetes" in (result.reason or "")


def test_live_offerings_for_kubernetes_and_local() -> None:
    offers = [
        LiveOffering(
            "kubernetes", "ctx-a", cpus=8, memory_gib=32, accelerator="H100", accelerator_count=8
        ),
        LiveOffering("kubernetes", "ctx-b", cpus=64, memory_gib=256, hourly_price=1.5, nodes=2),
        LiveOffering("local", None, cpus=4, memory_gib=16),
    ]
    space = ["kubernetes/ctx-a", "kubernetes/ctx-b", "local", "aws"]
    gpu = optimize(
        [Request(accelerator="h100", accelerator_count=2)], 1, space, AWS, offerings=offers
    )
    assert gpu.choice is not None and (gpu.choice.cloud, gpu.choice.region) == (
        "kubernetes",
        "ctx-a",
    )
    assert gpu.choice.hourly_cost == 0.0 and gpu.choice.instance_type == "4CPU--16GB--h100:2"
    # 16 vCPUs fit neither ctx-a nor this machine; ctx-b's two nodes hold two such pods.
    cpu = optimize([Request(cpus=Amount(16, at_least=True))], 2, space[:3], AWS, offerings=offers)
    assert cpu.choice is not None and cpu.choice.region == "ctx-b"
    assert cpu.choice.total_hourly_cost == pytest.approx(3.0)
    too_many = optimize(
        [Request(cpus=Amount(16, at_least=True))], 9, space[:3], AWS, offerings=offers
    )
    assert too_many.choice is None


def test_same_inputs_same_ranking_and_inputs_untouched() -> None:
    options = [Request(accelerator="T4"), Request(accelerator="V100")]
    before = list(options)
    assert optimize(options, 2, ["aws", "gcp"], BOTH) == optimize(options, 2, ["aws", "gcp"], BOTH)
    assert options == before


# ---- agreement with SkyPilot 0.14.1 on the corpus --------------------------------------------


def _choices() -> list[dict[str, object]]:
    if not CHOICES.is_file():
        return []
    return [json.loads(line) for line in CHOICES.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_shipped_catalog(["aws", "gcp"])


@pytest.mark.skipif(not CHOICES.is_file(), reason="shared corpus choices are not present")
@pytest.mark.parametrize("expected", _choices(), ids=lambda c: str(c["file"]))
def test_agrees_with_skypilot_choice(expected: dict[str, object], shipped: Catalog) -> None:
    path = SHARED / "skypilot-yaml" / str(expected["file"])
    if expected["failure_class"] == "rejected-by-skypilot-parse":
        from schema.errors import SpecError

        with pytest.raises(SpecError):
            load_task_file(path)
        return
    tasks = load_task_file(path).tasks
    results = [optimize_task(t.task, ["aws", "gcp"], shipped) for t in tasks]
    if not expected["ok"]:
        assert any(r.choice is None for r in results), [r.choice for r in results]
        return
    choices = [r.choice for r in results]
    assert all(c is not None for c in choices), [r.reason for r in results]
    first = choices[0]
    assert first is not None
    got = (first.cloud, first.region, first.zone, first.instance_type, first.use_spot)
    want = (str(expected["cloud"]).lower(), expected["region"], expected["zone"],
            expected["instance_type"], expected["use_spot"])  # fmt: skip
    # SkyPilot's hourly_cost is the whole file's: every task's price times its nodes.
    total = sum(c.total_hourly_cost for c in choices if c is not None)
    assert total == pytest.approx(float(str(expected["hourly_cost"])), abs=1e-4)
    if got != want:
        # Where costs tie, a different tie-break is fine if SkyPilot's pick is an equal-cost
        # candidate of ours.
        tied = [
            (c.cloud, c.region, c.zone, c.instance_type, c.use_spot)
            for c in results[0].candidates
            if c.total_hourly_cost == first.total_hourly_cost
        ]
        assert want in tied, f"placement {got} differs from SkyPilot's {want}"
