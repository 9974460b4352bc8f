"""Worker processes for the lock-race and crash tests: `python _workers.py KIND URL HOME ...`.

Run as a script, not imported by pytest (no test_ prefix). Resources written by `write` carry
their generation in every field, so a reader can tell a half-written batch from a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

# Our own directory (sys.path[0]) is tests/state, which would shadow the real `state` package.
sys.path[0] = str(Path(__file__).resolve().parents[2])

from schema.errors import LockHeldError  # noqa: E402
from state import Resource, open_store  # noqa: E402

BATCH = ("job.a", "job.b", "service.c")


def spec_hash(spec: object) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def say(line: str) -> None:
    # One write(2) per line: a writer and its forking parent share the pipe, and print()
    # may split a line into several writes that a kill or the other process can cut into.
    os.write(1, f"{line}\n".encode())


def batch(generation: int) -> list[Resource]:
    spec = {"generation": generation, "padding": "x" * 4000}
    return [
        Resource(
            address=address,
            kind=address.split(".")[0],
            spec_hash=spec_hash(spec),
            spec=spec,
            placement={"generation": generation},
            handles={"generation": generation},
            status=f"gen-{generation}",
        )
        for address in BATCH
    ]


def race(url: str, home: str, log: str, wins: int, go: str) -> None:
    store = open_store(url, Path(home))
    say("ready")
    while not os.path.exists(go):
        time.sleep(0.001)
    me, won, refused = f"racer-{os.getpid()}", 0, 0
    while won < wins:
        try:
            lock = store.acquire_lock(me, "race", ttl=60)
        except LockHeldError:
            refused += 1
            time.sleep(random.uniform(0, 0.002))
            continue
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"+ {me}\n".encode())
            time.sleep(0.001)
            os.write(fd, f"- {me}\n".encode())
        finally:
            os.close(fd)
        assert store.release_lock(lock.lock_id)
        won += 1
    print(json.dumps({"won": won, "refused": refused}), flush=True)


def first_open(url: str, home: str, go: str) -> None:
    say("ready")
    while not os.path.exists(go):
        time.sleep(0.001)
    with open_store(url, Path(home)) as store:
        meta = store.meta()
        say(f"{meta.lineage} {meta.schema_version}")


def write(url: str, home: str) -> None:
    store = open_store(url, Path(home))
    generation = store.meta().serial
    say(f"ready {os.getpid()}")
    while True:
        generation += 1
        store.put_resources(batch(generation))


def fork_writers(url: str, home: str) -> None:
    """Fork a fresh `write` process per line on stdin and print its pid.

    Forking from this already-warm interpreter skips the ~0.1-0.3 s of start-up and imports
    each writer would otherwise pay, which keeps 50 kills within seconds. No store is open
    here, so a child shares no connection with anyone.
    """
    import signal

    if url.startswith("postgres"):
        # open_store imports the driver lazily; import it once here, not in every child.
        import state.postgres  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed writers
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                write(url, home)
            finally:
                os._exit(1)
        say(f"pid {pid}")


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "race":
        race(args[0], args[1], args[2], int(args[3]), args[4])
    elif kind == "first-open":
        first_open(args[0], args[1], args[2])
    elif kind == "write":
        write(args[0], args[1])
    elif kind == "fork-writers":
        fork_writers(args[0], args[1])
    else:
        raise SystemExit(f"unknown worker {kind}")
