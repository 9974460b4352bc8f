"""Planning at scale: a synthetic repo of N resources against a state of N observed ones.

Mixed on purpose: no-ops, in-place updates, replacements, creates and deletes, on local and
cloud placements. Prints plan seconds and peak RSS, and the ratio to a baseline in the same
process (hashing every spec once, the least any planner must do). Targets from the issue:
under 2 s and under 400 MB for 10,000; optimizer under 1 ms per single-accelerator request.
Run: python bench/bench_plan.py [--resources 10000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from planner.catalog import load_shipped_catalog
from planner.diff import Observed, PlanInputs, make_plan
from planner.placement_schema import optimize_task
from planner.placement_types import LiveOffering
from planner.plan import Action
from planner.spec import spec_hash, spec_of
from schema.loader import load_tasks
from schema.repo import DesiredResource, DesiredState
from schema.repo_config import RepoConfig, load_repo_config

TEMPLATES = {
    "cluster": "resources: {infra: local, cpus: 1+, autostop: 30}\nsetup: echo s\nrun: echo r\n",
    "job": "resources: {accelerators: A100:1}\nrun: python train.py --seed {i}\n",
    "service": (
        "resources: {infra: local, ports: 8080}\nservice:\n  readiness_probe: /health\n"
        "  replicas: 2\nrun: python serve.py\n"
    ),
}
MACHINE = (LiveOffering(cloud="local", region=None, cpus=64.0, memory_gib=256.0, nodes=1000),)


def synthetic(n: int) -> tuple[DesiredState, dict[str, Observed]]:
    config: RepoConfig = load_repo_config(b"infra: [local, aws, gcp]\npolicy: {prune: true}\n", "s")
    desired: dict[str, DesiredResource] = {}
    observed: dict[str, Observed] = {}
    kinds = list(TEMPLATES)
    for i in range(n):
        kind = kinds[i % 3]
        name = f"r{i:05d}"
        text = TEMPLATES[kind].replace("{i}", str(i))
        tf = load_tasks(text, f"{kind}s/{name}.yaml")
        d = DesiredResource(f"{kind}.{name}", kind, name, tf.file, 1, tf)  # type: ignore[arg-type]
        bucket = i % 10
        if bucket < 8:  # 0-3 no-op, 4-5 update, 6 replace, 7 stale (replace); 8 create; 9 delete
            spec = spec_of(d)
            h = spec_hash(d)
            if bucket in (4, 5):
                spec = {**spec, "run": "echo old\n"}
                h = "sha256:old"
            elif bucket in (6, 7):
                spec = {**spec, "num_nodes": 2}
                h = "sha256:older"
            observed[d.address] = Observed(d.address, kind, spec, h, "RUNNING")
        if bucket != 9:
            desired[d.address] = d
        else:
            observed[d.address] = Observed(d.address, kind, spec_of(d), spec_hash(d), "RUNNING")
    return DesiredState("synthetic", config, desired, n), observed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=10_000)
    args = parser.parse_args()
    catalog = load_shipped_catalog(["aws", "gcp"])
    desired, observed = synthetic(args.resources)
    start = time.perf_counter()
    for d in desired.resources.values():
        spec_hash(d)
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    plan = make_plan(PlanInputs(desired, observed, catalog, offerings=MACHINE, lineage="l"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = {a.value: sum(1 for c in plan.changes if c.action == a) for a in Action}
    print(f"resources: {args.resources} desired/observed, actions {counts}")
    ratio = seconds / baseline
    print(f"plan: {seconds:.2f} s ({ratio:.1f}x hashing every spec once, {baseline:.2f} s)")
    print(f"peak RSS: {peak:.0f} MiB (target < 400 MiB); plan target < 2 s")
    task = load_tasks("resources: {accelerators: A100:1}\nrun: x\n", "t.yaml").tasks[0].task
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        optimize_task(task, ("aws", "gcp"), catalog)
        times.append(time.perf_counter() - t0)
    print(
        f"optimizer, A100:1 on aws+gcp, warm: median {statistics.median(times) * 1e3:.3f} ms "
        "(target < 1 ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
