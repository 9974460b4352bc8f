"""Apply at scale on this machine: N tiny local jobs at parallelism P, through the real CLI.

Prints the wall time of `skyform apply` (every job launched and recorded), the time until every
job SUCCEEDED, and the overhead per job, as a ratio to a baseline measured in the same run:
starting one bare Python interpreter (the least a detached per-job controller costs).
Run: python bench/bench_apply.py [--jobs 200] [--parallelism 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _skyform(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKYFORM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _baseline(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "repo", Path(tmp) / "home"
        (root / "jobs").mkdir(parents=True)
        (root / "skyform.yaml").write_text("infra: [local]\npolicy: {prune: true}\n")
        for i in range(args.jobs):
            (root / "jobs" / f"j{i:04d}.yaml").write_text(
                "resources: {infra: local, cpus: 0.001, memory: 0.001}\nrun: echo done\n"
            )
        per_start = _baseline(20)
        start = time.perf_counter()
        out = _skyform(["apply", str(root), "--yes", "--parallelism", str(args.parallelism)], home)
        applied = time.perf_counter() - start
        if out.returncode != 0:
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
            return 1
        done = 0
        while time.perf_counter() - start < 600:
            rows = json.loads(_skyform(["status", "--format", "json"], home).stdout)
            done = sum(r["status"] == "SUCCEEDED" for r in rows)
            if done == args.jobs:
                break
            time.sleep(1)
        finished = time.perf_counter() - start
        _skyform(["destroy", "--repo", str(root), "--yes"], home)
    print(f"jobs: {args.jobs} at parallelism {args.parallelism}; {done} succeeded")
    per_job = applied / args.jobs * 1e3
    print(f"apply (all launched and recorded): {applied:.1f} s, {per_job:.0f} ms/job")
    print(f"until all succeeded: {finished:.1f} s")
    ratio = (applied / args.jobs) / per_start
    print(f"overhead per job: {ratio:.1f}x one bare interpreter start ({per_start * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
