"""What is really live: one observe() per provider and a read of each controller's status,
turned into a status per address, with drift (someone else's doing) told apart from lifecycle
events (a job finished, a node recovered). Also resumes what a crashed apply left in the journal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from applier.controllers import common as controllers
from applier.provider import Provider, ResourceStatus
from schema.errors import ProviderError, TransientError
from state import Resource, Store

T = TypeVar("T")

# How long one provider may take to answer before its resources keep their recorded status.
OBSERVE_TIMEOUT_S = 120.0

JOB_DONE = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"})


@dataclass(frozen=True)
class Live:
    status: str
    drift: str | None = None
    lifecycle: str | None = None
    ready_replicas: int | None = None
    endpoint: str | None = None
    detail: str = ""


def refresh(
    records: list[Resource],
    providers: Mapping[str, Provider],
    timeout_s: float | None = None,
) -> dict[str, Live]:
    """`timeout_s` bounds each provider's observe() (default OBSERVE_TIMEOUT_S); providers
    are asked concurrently, so a slow one delays the answer by at most that, never stalls it."""
    out: dict[str, Live] = {}
    clusters = [r for r in records if r.kind == "cluster"]
    names = sorted({str((r.handles or {}).get("provider", "")) for r in clusters})
    # One listing per provider, never one call per resource. A provider that cannot be
    # reached (or does not answer in time) says nothing about its resources: they keep their
    # recorded status rather than read as deleted (and get relaunched).
    asked = {name: providers[name] for name in names if name in providers}
    by_provider: dict[str, dict[str, Any]] = {
        name: {o.handle.skyform_id: o for o in found}
        for name, found in call_each(asked, lambda _, p: p.observe(), timeout_s).items()
    }
    for r in records:
        handles = r.handles or {}
        if r.kind == "cluster":
            out[r.address] = _cluster(r, handles, by_provider)
        else:
            out[r.address] = _controlled(r, handles)
    return out


def _cluster(r: Resource, handles: Mapping[str, Any], seen: Mapping[str, Any]) -> Live:
    provider = str(handles.get("provider", ""))
    if provider not in seen:
        return Live(r.status, detail=f"{provider or 'its provider'} is not reachable from here")
    found = seen[provider].get(handles.get("skyform_id"))
    if found is None:
        return Live("MISSING", drift="deleted outside Skyform")
    if found.status == ResourceStatus.DEGRADED:
        return Live("UP", drift="a node was lost outside Skyform")
    if found.status == ResourceStatus.LAUNCHING:
        return Live("UP", drift="an interrupted launch; finishing it")
    if found.status == ResourceStatus.STOPPED:
        return Live("STOPPED", lifecycle="stopped")
    return Live("UP" if found.status == ResourceStatus.UP else str(found.status.value))


def _controlled(r: Resource, handles: Mapping[str, Any]) -> Live:
    directory = handles.get("controller")
    if not directory or controllers.read_spec(Path(directory)) is None:
        return Live("MISSING", drift="its controller is gone")
    path = Path(directory)
    status = controllers.read_status(path)
    state = str(status.get("status") or "PENDING")
    running = controllers.is_running(path)
    endpoint = status.get("endpoint") or handles.get("endpoint")
    if r.kind == "job":
        recoveries = int(status.get("recoveries") or 0)
        lifecycle = f"recovered {recoveries} time(s) after node loss" if recoveries else None
        if state in JOB_DONE:
            return Live(state, lifecycle=lifecycle, detail=str(status.get("message", "")))
        if not running:
            return Live("MISSING", drift="its controller stopped before the job finished")
        return Live(state, lifecycle=lifecycle)
    ready = status.get("ready_replicas")
    if not running:
        return Live("MISSING", drift="its controller stopped", endpoint=endpoint)
    return Live(state, ready_replicas=None if ready is None else int(ready), endpoint=endpoint)


def recover_journal(store: Store, home: Path, providers: Mapping[str, Provider]) -> list[str]:
    """Finish what a crashed apply started: adopt what exists, forget what never came to be.

    Every create wrote its intent (with the new resource's skyform_id) before the provider
    call, and everything a provider or controller creates carries that id, so the answer to
    "did it happen?" is found, not guessed.
    """
    notes: list[str] = []
    for intent in store.incomplete_intents():
        p = intent.payload
        sid = str(p.get("skyform_id", ""))
        kind = str(p.get("kind", ""))
        if intent.action == "delete":
            store.fail_intent(intent.key, "interrupted; the next plan shows what is left")
            notes.append(f"{intent.address}: an interrupted delete will be planned again")
            continue
        handles = _find(kind, intent.address, sid, home, providers)
        if handles is not None:
            handles["_placement"] = _matching(p.get("candidates") or [], handles)
        if handles is None:
            store.fail_intent(intent.key, "interrupted before anything was created")
            notes.append(f"{intent.address}: interrupted before creation; nothing to adopt")
            continue
        spec = dict(p.get("spec") or {})
        if p.get("depends_on"):
            spec["skyform.depends_on"] = list(p["depends_on"])
        store.put_resource(
            Resource(
                address=intent.address,
                kind=kind,
                spec_hash=str(p.get("spec_hash") or ""),
                spec=spec,
                placement=handles.pop("_placement", None),
                handles=handles,
                status="UP" if kind == "cluster" else "PENDING",
            )
        )
        store.complete_intent(intent.key, {"status": "adopted"})
        notes.append(f"{intent.address}: adopted what an interrupted apply created")
    return notes


def _matching(candidates: list[dict[str, Any]], handles: Mapping[str, Any]) -> Any:
    """The planned candidate the adopted resource runs on (the first, for controllers)."""
    placed = (handles.get("handle") or {}).get("placement")
    for c in candidates:
        if placed is None or all(
            c.get(k) == placed.get(k) for k in ("cloud", "region", "zone", "instance_type")
        ):
            return c
    return candidates[0] if candidates else None


def _find(
    kind: str, address: str, sid: str, home: Path, providers: Mapping[str, Provider]
) -> dict[str, Any] | None:
    if kind == "cluster":
        for name, provider in providers.items():
            for o in provider.observe():
                if o.handle.skyform_id == sid:
                    return {"provider": name, "skyform_id": sid, "handle": o.handle.as_dict()}
        return None
    directory = controllers.controller_dir(home, address, sid)
    spec = controllers.read_spec(directory)
    if spec is None:
        return None
    handles: dict[str, Any] = {"controller": str(directory), "skyform_id": sid}
    handles["version"] = spec.version
    if spec.lb_port:
        handles["endpoint"] = f"http://127.0.0.1:{spec.lb_port}"
    return handles


# Providers with a call of ours still running (keyed by id: the running call holds a reference,
# so the id cannot be reused meanwhile). Such a provider is not asked again until it answers:
# a hung provider costs one thread, not one more per tick.
_busy: set[int] = set()
_busy_lock = threading.Lock()


def call_each(
    providers: Mapping[str, Provider],
    call: Callable[[str, Provider], T],
    timeout_s: float | None = None,
) -> dict[str, T]:
    """`call` on every provider at once, each on a thread of its own; the answers of those that
    answered within `timeout_s` (default OBSERVE_TIMEOUT_S). A provider that raised a provider
    error, did not answer in time, or is still busy with an earlier call is left out.
    """
    limit = OBSERVE_TIMEOUT_S if timeout_s is None else timeout_s
    answers: dict[str, T] = {}
    crashed: list[BaseException] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def run(name: str, provider: Provider) -> None:
        try:
            value = call(name, provider)
        except (TransientError, ProviderError):
            return
        except Exception as exc:  # a bug, not an outage: the caller sees it, as it would inline
            with lock:
                crashed.append(exc)
            return
        finally:
            with _busy_lock:
                _busy.discard(id(provider))
        with lock:
            answers[name] = value

    for name, provider in providers.items():
        with _busy_lock:
            if id(provider) in _busy:
                continue
            _busy.add(id(provider))
        thread = threading.Thread(
            target=run, args=(name, provider), name=f"observe-{name}", daemon=True
        )
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + limit
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        if crashed:
            raise crashed[0]
        return dict(answers)  # a late answer lands in `answers` after this copy: ignored
