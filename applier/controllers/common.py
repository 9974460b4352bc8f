"""Detached per-resource controllers: the process that keeps a managed job recovered or a
service's replicas and load balancer alive after `skyform apply` has exited (SkyPilot's jobs
and serve controllers play this part).

A controller lives in `<home>/controllers/<address>-<id8>/`:
  spec.json    what to run (written by the applier before start; mode 0600: it holds the task
               text, which may carry inline secrets, as the repo checkout does)
  status.json  what the controller reports (written atomically by the controller)
  pid.json     {"pid", "start_time"}: liveness, robust to pid reuse
  cancel       present = the user asked to cancel / tear down; the controller cleans up and exits
  controller.log
The directory is the controller's tag: `list_controllers` finds every one, so a restarted apply
adopts a controller a crashed one started instead of starting a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from applier.provider import Placement, Provider
from applier.providers import registry
from applier.providers.local_node import is_alive, proc_stat, read_json, write_json
from schema.loader import TaskFile, load_tasks

STATUS_FILE = "status.json"
SPEC_FILE = "spec.json"
PID_FILE = "pid.json"
CANCEL_FILE = "cancel"
# Final statuses of jobs (SUCCEEDED...) and services (SHUTDOWN): nothing left to watch.
ENDED = frozenset(
    {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED", "SHUTDOWN"}
)


@dataclass(frozen=True)
class ControllerSpec:
    """Everything a controller needs, as plain JSON data."""

    kind: str  # "job" | "service"
    address: str
    skyform_id: str
    source_text: str  # the task file as committed (pipelines: every document)
    source_file: str  # its path in the repo, for error messages
    base_dir: str  # the infra repo root: relative workdir / file_mounts resolve here
    candidates: tuple[dict[str, Any], ...]  # Placement dicts in failover order (plan order)
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    version: int = 1  # bumped by the applier for a service's rolling update
    lb_port: int | None = None  # services: the stable load-balancer port
    provider_settings: Mapping[str, Any] = field(default_factory=dict)  # e.g. local caps
    poll_seconds: float = 5.0

    def tasks(self) -> TaskFile:
        return load_tasks(self.source_text, self.source_file, dict(self.env_overrides))

    def placements(self) -> list[Placement]:
        return [Placement(**c) for c in self.candidates]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [dict(c) for c in self.candidates]
        data["env_overrides"] = dict(self.env_overrides)
        data["provider_settings"] = dict(self.provider_settings)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControllerSpec:
        values = dict(data)
        values["candidates"] = tuple(values.get("candidates") or ())
        return cls(**values)


def controllers_root(home: Path) -> Path:
    return home / "controllers"


def controller_dir(home: Path, address: str, skyform_id: str) -> Path:
    return controllers_root(home) / f"{address}-{skyform_id[:8]}"


def write_spec(directory: Path, spec: ControllerSpec) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SPEC_FILE
    write_json(path, spec.to_json())
    os.chmod(path, 0o600)


def read_spec(directory: Path) -> ControllerSpec | None:
    data = read_json(directory / SPEC_FILE)
    return None if data is None else ControllerSpec.from_json(data)


def read_status(directory: Path) -> dict[str, Any]:
    return read_json(directory / STATUS_FILE) or {}


def write_status(directory: Path, status: Mapping[str, Any]) -> None:
    write_json(directory / STATUS_FILE, {**status, "updated_at": time.time()})


def register_self(directory: Path) -> None:
    """Called by a controller at start: records its pid and start time for liveness checks."""
    stat = proc_stat(os.getpid())
    write_json(directory / PID_FILE, {"pid": os.getpid(), "start_time": stat[1] if stat else 0})


def is_running(directory: Path) -> bool:
    rec = read_json(directory / PID_FILE)
    return rec is not None and is_alive(int(rec["pid"]), int(rec["start_time"]))


def cancel_requested(directory: Path) -> bool:
    return (directory / CANCEL_FILE).exists()


def start(home: Path, spec: ControllerSpec) -> Path:
    """Start (or adopt, when one already runs for this skyform_id) a detached controller.

    Check and spawn happen under the directory's lock, held until the new process registered,
    so an apply and the daemon's health tick racing here never start two controllers."""
    directory = controller_dir(home, spec.address, spec.skyform_id)
    directory.mkdir(parents=True, exist_ok=True)
    with _start_lock(directory):
        if is_running(directory):
            write_spec(directory, spec)  # a newer version for a rolling update is picked up
            return directory
        write_spec(directory, spec)
        _spawn(home, directory, spec.kind)
    return directory


@contextlib.contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    with (directory / ".start.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _spawn(home: Path, directory: Path, kind: str) -> None:
    env = {**os.environ, "SKYFORM_HOME": str(home)}
    with (directory / "controller.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"applier.controllers.{kind}", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives the CLI process and its terminal
            env=env,
            close_fds=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        rec = read_json(directory / PID_FILE)
        if rec is not None and int(rec["pid"]) == proc.pid:
            return
        time.sleep(0.05)


def unfinished(directory: Path) -> bool:
    """Whether the controller's work may still run or hold resources (not ended, or ended with
    teardowns left to finish)."""
    status = read_status(directory)
    return status.get("status") not in ENDED or bool(status.get("retiring"))


def revive(home: Path, skip: Collection[Path] = ()) -> list[tuple[str, Path]]:
    """Start again every controller whose process died before its work ended (OOM, a reboot, a
    kill): it adopts what it ran and carries on, so a job keeps its progress instead of being
    recreated. A controller asked to cancel is left to whoever asked. Returns (address, dir)."""
    revived = []
    for directory, spec in list_controllers(home):
        if directory in skip or is_running(directory) or cancel_requested(directory):
            continue
        if not unfinished(directory):
            continue
        with _start_lock(directory):
            if is_running(directory) or cancel_requested(directory) or read_spec(directory) is None:
                continue
            _spawn(home, directory, spec.kind)
        revived.append((spec.address, directory))
    return revived


def request_cancel(directory: Path) -> None:
    (directory / CANCEL_FILE).touch()
    rec = read_json(directory / PID_FILE)
    if rec is not None and is_alive(int(rec["pid"]), int(rec["start_time"])):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGTERM)


def wait_stopped(directory: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(directory):
            return True
        time.sleep(0.05)
    return not is_running(directory)


def list_controllers(home: Path) -> Iterator[tuple[Path, ControllerSpec]]:
    root = controllers_root(home)
    if not root.is_dir():
        return
    for directory in sorted(root.iterdir()):
        spec = read_spec(directory)
        if spec is not None:
            yield directory, spec


def make_provider(cloud: str, home: Path, settings: Mapping[str, Any]) -> Provider:
    """The provider for a placement's cloud (see `applier.providers.registry`)."""
    try:
        return registry.make_provider(cloud, home, settings)
    except registry.ProviderUnavailable as exc:
        raise NotImplementedError(str(exc)) from exc


def providers_for(
    placements: Sequence[Placement], home: Path, settings: Mapping[str, Any]
) -> dict[str, Provider]:
    usable, _ = registry.available([p.cloud for p in placements], home, settings)
    return usable
