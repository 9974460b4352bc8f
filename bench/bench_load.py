"""Loading speed and memory: the whole SkyPilot corpus, N times.

Prints files/s and peak RSS, and the ratio to a baseline measured in the same process: ruamel's
round-trip parse alone (what any line-preserving loader must pay), so noise on the machine
cancels out. Run: python bench/bench_load.py [--rounds N] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from schema.errors import SpecError
from schema.loader import load_tasks

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared/corpus/skypilot-yaml"


def _baseline(texts: list[tuple[str, str]]) -> None:
    for _, text in texts:
        yaml = YAML(typ="rt")
        yaml.version = (1, 1)
        list(yaml.load_all(text))


def _ours(texts: list[tuple[str, str]]) -> None:
    for name, text in texts:
        with contextlib.suppress(SpecError):  # the 3 files SkyPilot rejects too
            load_tasks(text, name)


def _rate(fn: object, texts: list[tuple[str, str]], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn(texts)  # type: ignore[operator]
    return rounds * len(texts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args()
    files = sorted(args.corpus.glob("*.yaml"))
    if not files:
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 1
    texts = [(f.name, f.read_text()) for f in files]
    _ours(texts)  # warm imports and pydantic's validators
    base = _rate(_baseline, texts, args.rounds)
    ours = _rate(_ours, texts, args.rounds)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"corpus: {len(files)} files x {args.rounds} rounds")
    print(f"ruamel parse only (baseline): {base:8.1f} files/s")
    print(f"skyform load (parse+validate): {ours:8.1f} files/s  ratio {ours / base:.2f}x baseline")
    print(f"peak RSS: {peak_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
