"""Test helpers for the daemon: a real git remote on disk, daemons as real processes, bounded
waits, and reads of the daemon's HTTP endpoints over loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git

from applier.providers.local import LocalProvider

ROOT = Path(__file__).resolve().parents[3]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Remote:
    """A bare repository as the remote, and a clone of it to commit from."""

    def __init__(self, base: Path) -> None:
        self.url = str(base / "remote.git")
        git.Repo.init(self.url, bare=True, initial_branch="main")
        self.work = base / "work"
        self.repo = git.Repo.init(self.work, initial_branch="main")
        self.repo.create_remote("origin", self.url)
        with self.repo.config_writer() as cfg:
            cfg.set_value("user", "name", "Skyform Test")
            cfg.set_value("user", "email", "test@skyform.invalid")
            cfg.set_value("commit", "gpgsign", "false")

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files, commit and push; returns the commit."""
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.repo.git.add("-A")
        self.repo.git.commit("-m", message, "--allow-empty")
        self.repo.git.push("--force", "origin", "HEAD:refs/heads/main")
        return str(self.repo.head.commit.hexsha)


def config(poll: str = "0.5s", drift: str = "1h", **reconcile: Any) -> str:
    extra = "".join(f"  {k}: {str(v).lower()}\n" for k, v in reconcile.items())
    return (
        "infra: [local]\npolicy: {prune: true}\n"
        f"reconcile:\n  poll_interval: {poll}\n  drift_interval: {drift}\n{extra}"
    )


def cluster(name: str, cpus: float = 0.1, setup: str | None = None) -> str:
    text = f"name: {name}\nresources: {{infra: local, cpus: {cpus}, memory: 0.1}}\n"
    if setup:
        text += f"setup: {setup}\n"
    return text + "run: sleep 600\n"


def live(home: Path) -> dict[str, list[str]]:
    """The provider's own view: skyform ids per address (a duplicate shows as two ids)."""
    out: dict[str, list[str]] = {}
    for o in LocalProvider(home).observe():
        out.setdefault(o.handle.address, []).append(o.handle.skyform_id)
    return out


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """(status, body) of a request; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)

    def listening(self) -> str | None:
        """Its base URL once it listens (read from its log), else None."""
        assert self.proc.poll() is None, f"the daemon exited: {self.log.read_text()[-3000:]}"
        if not self.base:
            for line in self.logs():
                if line["msg"] == "reconciler started" and line.get("pid") == self.proc.pid:
                    host, port = line["listen"]
                    self.base = f"http://{host}:{port}"
        return self.base or None

    def started(self) -> str:
        return str(wait_for("the daemon to listen", self.listening, timeout=30))

    def status(self) -> dict[str, Any]:
        code, body = http(f"{self.base}/api/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def metrics(self) -> str:
        return str(http(f"{self.base}/metrics")[1].decode())

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


def skyform_cmd() -> list[str]:
    script = Path(sys.executable).parent / "skyform"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def spawn_daemon(
    repo: str, home: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> DaemonProcess:
    """Start `skyform reconcile` as a process of its own; `started()` waits until it listens."""
    cmd = [*skyform_cmd(), "reconcile", "--repo", repo, "--listen", "127.0.0.1:0", *args]
    environ = {**os.environ, "SKYFORM_HOME": str(home), **(env or {})}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=environ, cwd=ROOT)
    return DaemonProcess(proc, log)


def start_daemon(
    repo: str, home: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> DaemonProcess:
    daemon = spawn_daemon(repo, home, log, *args, env=env)
    daemon.started()
    return daemon


@contextmanager
def running(
    repo: str, home: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[DaemonProcess]:
    daemon = start_daemon(repo, home, log, *args, env=env)
    try:
        yield daemon
    finally:
        daemon.kill(signal.SIGTERM)
