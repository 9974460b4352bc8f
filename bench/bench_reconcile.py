"""The reconcile daemon: time from `git push` to applied, and what an idle daemon costs.

1. Commit to applied, on the local provider (a real cluster is replaced each time), through a
   real `skyform reconcile` process: by poll (poll_interval P) and by signed webhook. Baseline in
   the same run: `skyform apply --yes` of the same change on a checkout (the CLI floor).
2. Idle cost: CPU (utime+stime from /proc) and RSS of a daemon watching N resources over a
   window in which the poll and drift timers fire, against the same daemon watching none.
   The N resources are clusters on an in-memory FakeProvider named `local` (N real local
   clusters would swamp a small box), so this measures the daemon, store, planner and refresh
   loop, not a cloud API.
Run: python bench/bench_reconcile.py [--rounds 5] [--resources 1000] [--window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import git

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
CLUSTER = "name: {name}\nresources: {{infra: local, cpus: {cpus}, memory: 0.1}}\nrun: sleep 600\n"


def _config(poll: float, drift: float) -> str:
    return (
        "infra: [local]\npolicy: {prune: true}\n"
        f"reconcile: {{poll_interval: {poll}s, drift_interval: {drift}s}}\n"
    )


def _repo(base: Path, files: dict[str, str]) -> tuple[git.Repo, str]:
    url = str(base / "remote.git")
    git.Repo.init(url, bare=True, initial_branch="main")
    work = git.Repo.init(base / "work", initial_branch="main")
    work.create_remote("origin", url)
    with work.config_writer() as cfg:
        cfg.set_value("user", "name", "bench")
        cfg.set_value("user", "email", "bench@skyform.invalid")
    _commit(work, files)
    return work, url


def _commit(work: git.Repo, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = Path(work.working_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    work.git.add("-A")
    work.git.commit("-m", "bench", "--allow-empty")
    work.git.push("--force", "origin", "HEAD:refs/heads/main")
    return str(work.head.commit.hexsha)


def _spawn(args: list[str], home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKYFORM_HOME": str(home), "SKYFORM_WEBHOOK_SECRET": SECRET}
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"reconciler started"' in line:
                host, port = json.loads(line)["listen"]
                return proc, f"http://{host}:{port}"
        time.sleep(0.05)
    raise RuntimeError(f"daemon did not start: {log.read_text()[-2000:]}")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_applied(base: str, commit: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(f"{base}/api/status").get("last_applied_commit") == commit:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"{commit[:12]} was not applied in {timeout}s")


def _webhook(base: str, commit: str) -> None:
    from reconciler.daemon.webhook import sign

    body = json.dumps({"ref": "refs/heads/main", "after": commit}).encode()
    req = urllib.request.Request(
        f"{base}/webhook", data=body, headers={"X-Hub-Signature-256": sign(body, SECRET)}
    )
    urllib.request.urlopen(req, timeout=30).close()


def _skyform() -> list[str]:
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def commit_to_applied(rounds: int, poll: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cli": [], "poll": [], "webhook": []}
    with tempfile.TemporaryDirectory() as tmp:
        base, home = Path(tmp), Path(tmp) / "home"
        first = CLUSTER.format(name="c", cpus=0.1)
        work, url = _repo(base, {"skyform.yaml": _config(poll, 3600), "clusters/c.yaml": first})
        cpus = [0.1]

        def change() -> str:
            cpus[0] = 0.2 if cpus[0] == 0.1 else 0.1
            return _commit(work, {"clusters/c.yaml": CLUSTER.format(name="c", cpus=cpus[0])})

        for _ in range(rounds):  # the baseline: a person or CI job running apply
            change()
            start = time.monotonic()
            subprocess.run(
                [*_skyform(), "apply", str(work.working_dir), "--yes"],
                env={**os.environ, "SKYFORM_HOME": str(home)},
                capture_output=True,
                check=True,
            )
            out["cli"].append(time.monotonic() - start)
        args = [*_skyform(), "reconcile", "--repo", url, "--listen", "127.0.0.1:0"]
        proc, daemon = _spawn(args, home, base / "daemon.log")
        try:
            for mode in ("poll", "webhook"):
                for _ in range(rounds):
                    commit = change()
                    start = time.monotonic()
                    if mode == "webhook":
                        _webhook(daemon, commit)
                    out[mode].append(_wait_applied(daemon, commit) - start)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            subprocess.run(
                [*_skyform(), "destroy", "--repo", str(work.working_dir), "--yes"],
                env={**os.environ, "SKYFORM_HOME": str(home)},
                capture_output=True,
                check=False,
            )
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_cost(resources: int, window: float, poll: float, drift: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        base, home = Path(tmp), Path(tmp) / "home"
        files = {"skyform.yaml": _config(poll, drift)}
        for i in range(resources):
            files[f"clusters/c{i:04d}.yaml"] = CLUSTER.format(name=f"c{i:04d}", cpus=0.1)
        _, url = _repo(base, files)
        args = [sys.executable, __file__, "--serve-fake", url]
        proc, daemon = _spawn(args, home, base / "daemon.log")
        try:
            deadline = time.monotonic() + 600
            while _get(f"{daemon}/api/status").get("last_applied_commit") is None:
                if resources == 0 and _get(f"{daemon}/api/status").get("last_sync"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the fake apply did not finish")
                time.sleep(0.2)
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            time.sleep(window)
            cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            rss = _rss_mib(proc.pid)
            status = _get(f"{daemon}/api/status")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return {"cpu": cpu, "rss": rss, "watched": float(len(status["resources"]))}


def serve_fake(url: str) -> None:
    """A daemon whose `local` provider is in memory (the idle-cost half of the bench)."""
    from applier.provider import FreeCapacity
    from applier.providers.fake import FakeProvider
    from reconciler.context import skyform_home
    from reconciler.daemon import logs
    from reconciler.daemon.service import Daemon
    from reconciler.daemon.sync import Settings

    logs.setup("INFO")
    big = FreeCapacity("local", "local", None, cpus=1e6, memory_gib=1e6)
    fake = FakeProvider("local", capacity=[big])
    settings = Settings(
        repo=url,
        home=skyform_home(),
        listen=("127.0.0.1", 0),
        parallelism=32,
        providers_for=lambda desired: {"local": fake},
    )
    daemon = Daemon(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    stop.wait()
    daemon.stop()


def _ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {xs[len(xs) // 2] * 1e3:.0f} ms (min {xs[0] * 1e3:.0f}, max {xs[-1] * 1e3:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--serve-fake", metavar="URL")
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake)
        return 0
    lat = commit_to_applied(args.rounds, args.poll)
    cli = sorted(lat["cli"])[len(lat["cli"]) // 2]
    print(f"commit -> applied, local provider, {args.rounds} rounds each:")
    print(f"  baseline `skyform apply --yes`: {_ms(lat['cli'])}")
    for mode in ("webhook", "poll"):
        med = sorted(lat[mode])[len(lat[mode]) // 2]
        print(f"  daemon by {mode:<7} (poll {args.poll:g}s): {_ms(lat[mode])}; {med / cli:.2f}x")
    poll, drift = 10.0, 20.0
    empty = idle_cost(0, args.window, poll, drift)
    full = idle_cost(args.resources, args.window, poll, drift)
    print(f"idle daemon over {args.window:g}s (poll {poll:g}s, drift {drift:g}s, fake provider):")
    for name, r in (("0 resources (baseline)", empty), (f"{args.resources} resources", full)):
        print(f"  {name}: CPU {r['cpu'] * 100:.1f}% of a core, RSS {r['rss']:.0f} MiB")
    print(
        f"  ratio: CPU {full['cpu'] / max(empty['cpu'], 1e-4):.1f}x, "
        f"RSS {full['rss'] / empty['rss']:.2f}x (watching {full['watched']:.0f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
