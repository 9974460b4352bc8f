"""One plan change carried out against providers and controllers, with failover.

Each function returns what the state store should now hold for the address (or None once it
is gone); the engine in `applier.execute` does the journaling and the store writes, so these
never touch the store and can run in worker threads.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from applier.controllers import common as controllers
from applier.provider import Handle, LaunchRequest, Placement, Provider, ResourceKind
from planner.plan import Change, PlacementView
from schema.errors import CapacityError, ProviderError, TransientError
from schema.repo import DesiredResource

Notify = Callable[[str, str], None]


@dataclass
class Attempt:
    placement: str
    outcome: str  # "ok" | "capacity" | "error"
    message: str = ""


@dataclass
class Outcome:
    """What a change left behind: the resource record's fields, and the attempts made."""

    status: str
    placement: PlacementView | None
    handles: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    blocked: list[PlacementView] = field(default_factory=list)


class ExhaustedError(ProviderError):
    def __init__(
        self, address: str, attempts: list[Attempt], blocked: list[PlacementView] | None = None
    ) -> None:
        lines = "\n".join(f"  {i}. {a.placement}: {a.message}" for i, a in enumerate(attempts, 1))
        super().__init__(f"{address}: no candidate placement had capacity; attempts:\n{lines}")
        self.attempts = attempts
        self.blocked = blocked or []


def to_placement(view: PlacementView) -> Placement:
    acc = next(iter(view.accelerators.items()), None) if view.accelerators else None
    return Placement(
        cloud=view.cloud,
        region=view.region,
        zone=view.zone,
        instance_type=view.instance_type,
        accelerator=acc[0] if acc else None,
        accelerator_count=float(acc[1]) if acc else 0.0,
        use_spot=view.use_spot,
        cpus=view.vcpus,
        memory_gib=view.memory_gib,
    )


def placement_dict(view: PlacementView) -> dict[str, Any]:
    p = to_placement(view)
    return {
        "cloud": p.cloud,
        "region": p.region,
        "zone": p.zone,
        "instance_type": p.instance_type,
        "accelerator": p.accelerator,
        "accelerator_count": p.accelerator_count,
        "use_spot": p.use_spot,
        "cpus": p.cpus,
        "memory_gib": p.memory_gib,
    }


def candidates(change: Change) -> list[PlacementView]:
    return [p for p in (change.placement, *change.failover) if p is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Env:
    """What actions need from the world; built by the caller, nothing global."""

    home: Path
    base_dir: Path
    providers: Mapping[str, Provider]
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    provider_settings: Mapping[str, Any] = field(default_factory=dict)
    transient_retries: int = 3


def launch_cluster(
    change: Change, desired: DesiredResource, env: Env, skyform_id: str, notify: Notify
) -> Outcome:
    """Try the plan's candidates in order; a capacity error blocks that place and moves on."""
    task = desired.source.tasks[0].task
    attempts: list[Attempt] = []
    blocked: list[PlacementView] = []
    for view in candidates(change):
        provider = env.providers.get(view.cloud)
        label = f"{view.infra} {view.instance_type}".strip()
        if provider is None:
            attempts.append(Attempt(label, "error", f"{view.cloud} is not available here"))
            continue
        req = LaunchRequest(
            address=change.address,
            skyform_id=skyform_id,
            kind=ResourceKind.CLUSTER,
            task=task,
            placement=to_placement(view),
            num_nodes=task.num_nodes,
            base_dir=env.base_dir,
            envs=env.env_overrides,
        )
        notify(change.address, f"launching on {label}")
        try:
            handle = _with_retries(provider, req, env.transient_retries)
        except CapacityError as exc:
            attempts.append(Attempt(label, "capacity", str(exc)))
            blocked.append(view)
            notify(change.address, f"no capacity on {label}: {exc}; failing over")
            continue
        attempts.append(Attempt(label, "ok"))
        handles = {"provider": view.cloud, "skyform_id": skyform_id, "handle": handle.as_dict()}
        return Outcome("UP", view, handles, attempts, blocked)
    raise ExhaustedError(change.address, attempts, blocked)


def update_cluster(
    change: Change,
    desired: DesiredResource,
    env: Env,
    skyform_id: str,
    old: Mapping[str, Any],
    notify: Notify,
) -> Outcome:
    """In place: stop or start for `skyform: {state: ...}`, else relaunch with the same id
    (the provider adopts the nodes and re-runs setup when its inputs changed)."""
    wants_stopped = (change.after or {}).get("skyform.state") == "stopped"
    data = old.get("handle")
    provider = env.providers.get(str(old.get("provider", "")))
    if data and provider is not None:
        handle = Handle.from_dict(data)
        if change.drift and not wants_stopped:
            # A node lost outside Skyform: start() brings back the nodes that are gone.
            notify(change.address, f"healing drift ({change.drift})")
            with contextlib.suppress(ProviderError):  # e.g. a launch to finish, not restart
                provider.start(handle)
        if wants_stopped:
            notify(change.address, "stopping")
            provider.stop(handle)
            return Outcome("STOPPED", change.placement, dict(old))
        if (change.before or {}).get("skyform.state") == "stopped":
            notify(change.address, "starting")
            provider.start(handle)
    return launch_cluster(change, desired, env, skyform_id, notify)


def _with_retries(provider: Provider, req: LaunchRequest, retries: int) -> Handle:
    for attempt in range(retries + 1):
        try:
            return provider.launch(req)
        except TransientError as exc:
            if attempt == retries:
                raise ProviderError(f"gave up after {retries + 1} tries: {exc}") from exc
            time.sleep(min(exc.retry_after, 5.0))
    raise AssertionError("unreachable")


def start_controller(
    change: Change,
    desired: DesiredResource,
    env: Env,
    skyform_id: str,
    *,
    version: int = 1,
    lb_port: int | None = None,
) -> Outcome:
    """Jobs and services run under a detached controller that outlives this process."""
    source = Path(env.base_dir) / desired.file
    spec = controllers.ControllerSpec(
        kind=desired.kind,
        address=change.address,
        skyform_id=skyform_id,
        source_text=source.read_text(),
        source_file=desired.file,
        base_dir=str(env.base_dir),
        candidates=tuple(placement_dict(v) for v in candidates(change)),
        env_overrides=dict(env.env_overrides),
        version=version,
        lb_port=lb_port,
        provider_settings=dict(env.provider_settings),
        poll_seconds=1.0,
    )
    directory = controllers.start(env.home, spec)
    handles: dict[str, Any] = {
        "controller": str(directory),
        "skyform_id": skyform_id,
        "version": version,
    }
    status = "PENDING"
    if desired.kind == "service":
        handles["endpoint"] = f"http://127.0.0.1:{lb_port}"
        status = "STARTING"
    return Outcome(status, change.placement, handles)


def stop_controller(handles: Mapping[str, Any], timeout: float = 60.0) -> None:
    """Cancel the controller (it tears down what it runs) and remove its directory."""
    directory = handles.get("controller")
    if not directory:
        return
    path = Path(directory)
    if not controllers.is_running(path) and controllers.unfinished(path):
        # A dead controller cannot tear down what it ran: start it again with the cancel
        # already requested; it adopts its resources, terminates them and exits.
        spec = controllers.read_spec(path)
        if spec is not None:
            (path / controllers.CANCEL_FILE).touch()
            controllers.start(path.parent.parent, spec)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (
                controllers.unfinished(path) or controllers.is_running(path)
            ):
                time.sleep(0.1)
    if controllers.is_running(path):
        controllers.request_cancel(path)
        if not controllers.wait_stopped(path, timeout):
            raise ProviderError(f"controller in {path} did not stop within {timeout:.0f}s")
    shutil.rmtree(path, ignore_errors=True)


def terminate_cluster(handles: Mapping[str, Any], providers: Mapping[str, Provider]) -> None:
    data = handles.get("handle")
    if not data:
        return
    handle = Handle.from_dict(data)
    provider = providers.get(handle.provider) or providers.get(handle.placement.cloud)
    if provider is None:
        raise ProviderError(
            f"{handle.address} runs on {handle.provider}, which is not available here; "
            "run destroy where its credentials are"
        )
    provider.terminate(handle)


def new_id() -> str:
    return uuid.uuid4().hex
