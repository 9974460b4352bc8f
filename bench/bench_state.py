"""State-store throughput per backend: resource writes and reads, lock cycles.

Run: `python bench/bench_state.py [--resources 10000] [--no-postgres]`. Each figure is printed
in ops/s and as a ratio to a baseline measured in the same process on the same backend: the bare
driver doing the same SQL with none of the store's work (serial step, change detection, JSON),
so a ratio near 1 means the store adds little. Never used for timed assertions in tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from state import Resource, Store, open_store
from state.db import Db
from state.factory import open_db

PG_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 100


def resources(n: int, tag: str) -> list[Resource]:
    return [
        Resource(
            address=f"job.bench-{i:05d}",
            kind="job",
            spec_hash=f"{tag}-{i}",
            spec={"run": "python train.py", "resources": {"accelerators": "A100:8"}, "i": i},
            placement={"infra": "aws", "region": "us-east-1", "price": 32.77},
            handles={"instance_ids": [f"i-{i:08x}"]},
            status="running",
        )
        for i in range(n)
    ]


def rate(count: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def baseline(db: Db, n: int, singles: int) -> dict[str, float]:
    """The bare driver: same statements shape, no serial, no change check, no JSON."""
    db.execute("CREATE TABLE bench_raw (address TEXT PRIMARY KEY, body TEXT NOT NULL)")
    rows = [(f"job.bench-{i:05d}", "x" * 200) for i in range(n)]

    def batched() -> None:
        for start in range(0, n, BATCH):
            db.begin(write=True)
            for row in rows[start : start + BATCH]:
                db.execute("INSERT INTO bench_raw (address, body) VALUES (?, ?)", row)
            db.commit()

    def single() -> None:
        for address, body in rows[:singles]:
            db.begin(write=True)
            db.execute("UPDATE bench_raw SET body = ? WHERE address = ?", (body + "y", address))
            db.commit()

    def reads() -> None:
        for address, _ in rows:
            db.execute("SELECT address, body FROM bench_raw WHERE address = ?", (address,))

    def lock_cycles() -> None:
        # Two transactions per cycle, as a real acquire and release take.
        for _ in range(singles):
            db.begin(write=True)
            db.execute("SELECT address FROM bench_raw WHERE address = 'lock'")
            db.execute("INSERT INTO bench_raw (address, body) VALUES ('lock', 'held')")
            db.commit()
            db.begin(write=True)
            db.execute("DELETE FROM bench_raw WHERE address = 'lock'")
            db.commit()

    result = {
        "write, 100 per transaction": rate(n, batched),
        "write, 1 per transaction": rate(singles, single),
        "read one by address": rate(n, reads),
        "list all": rate(n, lambda: db.execute("SELECT address, body FROM bench_raw")),
        "lock acquire + release": rate(singles, lock_cycles),
    }
    db.execute("DROP TABLE bench_raw")
    return result


def measure(store: Store, n: int, singles: int) -> dict[str, float]:
    first, second = resources(n, "a"), resources(singles, "b")

    def batched() -> None:
        for start in range(0, n, BATCH):
            store.put_resources(first[start : start + BATCH])

    def single() -> None:
        for resource in second:
            store.put_resource(resource)

    def reads() -> None:
        for resource in first:
            store.get_resource(resource.address)

    def locks() -> None:
        for _ in range(singles):
            store.release_lock(store.acquire_lock("bench", "bench", ttl=60).lock_id)

    return {
        "write, 100 per transaction": rate(n, batched),
        "write, 1 per transaction": rate(singles, single),
        "read one by address": rate(n, reads),
        "list all": rate(n, store.list_resources),
        "lock acquire + release": rate(singles, locks),
    }


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    try:
        import psycopg

        admin = psycopg.connect(PG_DATABASE, autocommit=True, connect_timeout=3)
    except Exception as exc:  # any failure just means: no PostgreSQL figures
        print(f"postgresql: skipped ({exc})")
        yield None
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_DATABASE}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def report(name: str, url: str, home: Path, n: int, singles: int) -> None:
    db = open_db(url, home)
    try:
        base = baseline(db, n, singles)
    finally:
        db.close()
    with open_store(url, home) as store:
        ours = measure(store, n, singles)
    print(f"\n{name}: {n} resources, {singles} single-transaction writes and lock cycles")
    print(f"  {'operation':<28} {'store ops/s':>12} {'bare ops/s':>12} {'ratio':>7}")
    for op, value in ours.items():
        print(f"  {op:<28} {value:>12,.0f} {base[op]:>12,.0f} {value / base[op]:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        report("sqlite", f"sqlite:///{home / 'bench.db'}", home, args.resources, args.singles)
        if not args.no_postgres:
            with postgres_schema() as url:
                if url is not None:
                    report("postgresql", url, home, args.resources, args.singles)


if __name__ == "__main__":
    main()
