"""A stdlib fake of the GCE REST API on 127.0.0.1, speaking the JSON google-cloud-compute sends
and expects: instances insert/get/list/aggregatedList/delete/stop/start and zone operations
get/wait, setLabels (with its fingerprint check), with injectable faults as GCE reports them:

- stockouts: the insert call succeeds and its *operation* ends in ZONE_RESOURCE_POOL_EXHAUSTED
  (HTTP 503 on the operation), by machine type and zone;
- quota: HTTP 403 QUOTA_EXCEEDED on the insert call itself;
- rate limits: HTTP 403 rateLimitExceeded on every n-th call of a method;
- preemption: a test hook turns a spot instance TERMINATED (or deletes it); others change an
  instance's status, labels or creation time as a console user or GCE itself would.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.cloud_support.served import Served

PREFIX = "/compute/v1/projects/"
_FILTER = re.compile(r'labels\.([a-z0-9_-]+)\s*(?:=\s*"([^"]*)"|:\s*\*)')


@dataclass
class Fault:
    code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"
    machine_type: str | None = None
    zone: str | None = None
    times: int | None = None  # None: forever

    def matches(self, zone: str, machine_type: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return (self.zone in (None, zone)) and (self.machine_type in (None, machine_type))


@dataclass
class State:
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    rate_limit_every: dict[str, int] = field(default_factory=dict)  # method -> every n-th call
    counts: Counter[str] = field(default_factory=Counter)
    inserts: list[tuple[str, str]] = field(default_factory=list)  # (zone, machine type) tried
    rate_limited: int = 0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    lock: threading.Lock = field(default_factory=threading.Lock)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def _labels_match(instance: dict[str, Any], expr: str) -> bool:
    labels = instance.get("labels") or {}
    for key, value in _FILTER.findall(expr):
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def _fingerprint(labels: dict[str, str]) -> str:
    """GCE's optimistic lock on labels: changes whenever they do."""
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _timestamp(when: datetime) -> str:
    """As GCE writes its timestamps: RFC 3339 with milliseconds and the offset."""
    return when.isoformat(timespec="milliseconds")


class FakeGce(Served):
    """Start with `start()`; point the client at `endpoint`; `stop()` at the end."""

    def __init__(self) -> None:
        self.state = State()
        handler = type("Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._serve(server)

    def reset(self) -> None:
        with self.state.lock:
            self.state = State()

    # ---- test hooks -----------------------------------------------------------------------

    def live(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(i) for i in self.state.instances.values()]

    def preempt(self, zone: str, name: str, delete: bool = False) -> None:
        """GCE reclaims a spot instance: TERMINATED (action STOP) or deleted (action DELETE)."""
        with self.state.lock:
            if delete:
                del self.state.instances[(zone, name)]
            else:
                self.state.instances[(zone, name)]["status"] = "TERMINATED"

    def set_status(self, zone: str, name: str, status: str) -> None:
        with self.state.lock:
            self.state.instances[(zone, name)]["status"] = status

    def drop_label(self, zone: str, name: str, key: str) -> None:
        with self.state.lock:
            instance = self.state.instances[(zone, name)]
            instance["labels"].pop(key, None)
            instance["labelFingerprint"] = _fingerprint(instance["labels"])

    def age(self, zone: str, name: str, seconds: float) -> None:
        """The instance was created `seconds` earlier than it was."""
        with self.state.lock:
            instance = self.state.instances[(zone, name)]
            created = datetime.fromisoformat(instance["creationTimestamp"])
            instance["creationTimestamp"] = _timestamp(created - timedelta(seconds=seconds))

    # ---- the API --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        parts = path[len(PREFIX) :].split("/") if path.startswith(PREFIX) else []
        if len(parts) < 2:
            raise ApiError(404, "notFound", f"no route {path}")
        project, rest = parts[0], parts[1:]
        with self.state.lock:
            key = f"{method} {'/'.join(p if i % 2 == 0 else '*' for i, p in enumerate(rest))}"
            self._rate_limit(key)
            if rest == ["aggregated", "instances"]:
                return self._aggregated(query)
            if len(rest) < 3 or rest[0] != "zones":
                raise ApiError(404, "notFound", f"no route {path}")
            zone, kind, tail = rest[1], rest[2], rest[3:]
            if kind == "operations" and tail:
                return self._operation(zone, tail[0])
            if kind != "instances":
                raise ApiError(404, "notFound", f"no route {path}")
            return self._instances(method, project, zone, tail, query, body)

    def _rate_limit(self, key: str) -> None:
        s = self.state
        s.counts[key] += 1
        every = s.rate_limit_every.get(key)
        if every and s.counts[key] % every == 0:
            s.rate_limited += 1
            raise ApiError(403, "rateLimitExceeded", "Rate Limit Exceeded")

    def _instances(
        self,
        method: str,
        project: str,
        zone: str,
        tail: list[str],
        query: dict[str, str],
        body: Any,
    ) -> Any:
        s = self.state
        if method == "POST" and not tail:
            return self._insert(project, zone, body)
        if method == "GET" and not tail:
            found = [i for (z, _), i in s.instances.items() if z == zone]
            return {"items": [i for i in found if _labels_match(i, query.get("filter", ""))]}
        if not tail or (zone, tail[0]) not in s.instances:
            raise ApiError(
                404, "notFound", f"The resource 'instances/{'/'.join(tail)}' was not found"
            )
        name = tail[0]
        if method == "GET" and len(tail) == 1:
            return s.instances[(zone, name)]
        if method == "DELETE" and len(tail) == 1:
            del s.instances[(zone, name)]
            return self._new_op(project, zone, "delete", name)
        if method == "POST" and tail[1:] in (["stop"], ["start"]):
            s.instances[(zone, name)]["status"] = "TERMINATED" if tail[1] == "stop" else "RUNNING"
            return self._new_op(project, zone, tail[1], name)
        if method == "POST" and tail[1:] == ["setLabels"]:
            instance = s.instances[(zone, name)]
            if body.get("labelFingerprint", "") != instance["labelFingerprint"]:
                raise ApiError(412, "conditionNotMet", "Labels fingerprint invalid")
            instance["labels"] = dict(body.get("labels") or {})
            instance["labelFingerprint"] = _fingerprint(instance["labels"])
            return self._new_op(project, zone, "setLabels", name)
        raise ApiError(404, "notFound", f"no route {tail}")

    def _insert(self, project: str, zone: str, body: dict[str, Any]) -> Any:
        s = self.state
        name = body["name"]
        machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
        s.inserts.append((zone, machine))
        fault = next((f for f in s.faults if f.matches(zone, machine)), None)
        if fault is not None and fault.times is not None:
            fault.times -= 1
        if fault is not None and fault.code == "QUOTA_EXCEEDED":
            region = zone.rsplit("-", 1)[0]
            message = f"Quota 'CPUS' exceeded.  Limit: 0.0 in region {region}."
            raise ApiError(403, "QUOTA_EXCEEDED", message)
        if fault is not None:
            message = f"The zone 'projects/{project}/zones/{zone}' does not have enough resources"
            return self._new_op(project, zone, "insert", name, (fault.code, message))
        if (zone, name) in s.instances:
            raise ApiError(409, "alreadyExists", f"The resource '{name}' already exists")
        n = next(s.ids)
        s.instances[(zone, name)] = {
            **body,
            "id": str(n),
            "zone": f"{self.endpoint}{PREFIX}{project}/zones/{zone}",
            "status": "RUNNING",
            "labelFingerprint": _fingerprint(body.get("labels") or {}),
            "creationTimestamp": _timestamp(datetime.now(UTC)),
            "networkInterfaces": [
                {
                    "networkIP": f"10.128.{n // 250}.{n % 250 + 2}",
                    "accessConfigs": [
                        {"name": "External NAT", "natIP": f"34.1.{n // 250}.{n % 250}"}
                    ],
                }
            ],
        }
        return self._new_op(project, zone, "insert", name)

    def _new_op(
        self, project: str, zone: str, kind: str, target: str, error: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        n = next(self.state.ids)
        op: dict[str, Any] = {
            "id": str(n),
            "name": f"operation-{n}",
            "operationType": kind,
            "status": "RUNNING",
            "targetLink": f"projects/{project}/zones/{zone}/instances/{target}",
            "zone": f"projects/{project}/zones/{zone}",
        }
        self.state.operations[(zone, op["name"])] = op
        if error is not None:
            op["_error"] = error
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _operation(self, zone: str, name: str) -> Any:
        """Operations are RUNNING when returned and DONE on the first get/wait."""
        op = self.state.operations.get((zone, name))
        if op is None:
            raise ApiError(404, "notFound", f"operation {name} not found")
        op["status"] = "DONE"
        if "_error" in op:
            code, message = op["_error"]
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"] = 503
            op["httpErrorMessage"] = "SERVICE UNAVAILABLE"
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _aggregated(self, query: dict[str, str]) -> Any:
        items: dict[str, Any] = {}
        for (zone, _), instance in sorted(self.state.instances.items()):
            if _labels_match(instance, query.get("filter", "")):
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(instance)
        return {"items": items}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGce

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        try:
            status, out = 200, self.fake.handle(self.command, url.path, query, body)
        except ApiError as exc:
            status = exc.status
            error = {"reason": exc.reason, "message": str(exc), "domain": "global"}
            out = {"error": {"code": exc.status, "message": str(exc), "errors": [error]}}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve
