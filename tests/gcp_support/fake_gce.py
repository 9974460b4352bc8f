"""A stdlib fake of the GCE REST API on 127.0.0.1, speaking the JSON google-cloud-compute sends
and expects: instances insert/get/list/aggregatedList/delete/stop/start and zone operations
get/wait, setLabels and setTags (with their fingerprint checks), global firewalls
insert/get/list/delete/patch (JSON merge patch) and global operations get/wait, names, tags and
ports checked as GCE checks them, with injectable faults as GCE reports them:

- stockouts: the insert call succeeds and its *operation* ends in ZONE_RESOURCE_POOL_EXHAUSTED
  (HTTP 503 on the operation), by machine type and zone;
- quota: HTTP 403 QUOTA_EXCEEDED on the insert call itself;
- firewall quota (`FirewallFault`): HTTP 403 QUOTA_EXCEEDED on the firewall insert, or its
  global operation ending in that error;
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
_NAME_FILTER = re.compile(r'^\s*\(?\s*name\s*(?:=|eq)\s*"?([a-z0-9-]+)"?\s*\)?\s*$')
# GCE's rule for resource names and network tags (RFC 1035 labels).
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


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
class FirewallFault:
    """The next firewall inserts fail with `code`: on the call (403), or in its operation."""

    code: str = "QUOTA_EXCEEDED"
    in_operation: bool = False
    times: int | None = None  # None: forever


@dataclass
class State:
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    firewall_faults: list[FirewallFault] = field(default_factory=list)
    rate_limit_every: dict[str, int] = field(default_factory=dict)  # method -> every n-th call
    counts: Counter[str] = field(default_factory=Counter)
    inserts: list[tuple[str, str]] = field(default_factory=list)  # (zone, machine type) tried
    calls: list[str] = field(default_factory=list)  # every call's `counts` key, in order
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


def _fingerprint(labels: Any) -> str:
    """GCE's optimistic lock on labels (or tags): changes whenever they do."""
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {why}")


def _check_name(field_name: str, value: Any) -> None:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise _invalid(field_name, value, f"Must be a match of regex '{NAME.pattern}'")


def _check_allowed(rules: Any) -> None:
    """`allowed[]`: a protocol each, and ports as numbers or ranges in 0-65535."""
    for i, rule in enumerate(rules or ()):
        if not rule.get("IPProtocol"):
            raise _invalid(f"resource.allowed[{i}].IPProtocol", "", "Required.")
        for j, port in enumerate(rule.get("ports") or ()):
            m = _PORTS.fullmatch(str(port))
            lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (1, 0)
            if not (0 <= lo <= hi <= 65535):
                raise _invalid(f"resource.allowed[{i}].ports[{j}]", port, "Invalid port range.")


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

    def set_tags(self, zone: str, name: str, tags: list[str]) -> None:
        """The instance's network tags become `tags` (an instance launched by older code)."""
        with self.state.lock:
            self.state.instances[(zone, name)]["tags"] = {
                "items": list(tags),
                "fingerprint": _fingerprint({"items": tags}),
            }

    def firewalls(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(f) for f in self.state.firewalls.values()]

    def put_firewall(self, project: str, body: dict[str, Any]) -> None:
        """A rule made outside the provider (a crashed launch's, or a console user's)."""
        with self.state.lock:
            self._firewall_insert(project, dict(body))

    def drop_firewall(self, name: str) -> None:
        with self.state.lock:
            del self.state.firewalls[name]

    def count(self, prefix: str) -> int:
        """How many calls so far had a `counts` key starting with `prefix`."""
        with self.state.lock:
            return sum(n for key, n in self.state.counts.items() if key.startswith(prefix))

    # ---- the API --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        parts = path[len(PREFIX) :].split("/") if path.startswith(PREFIX) else []
        if len(parts) < 2:
            raise ApiError(404, "notFound", f"no route {path}")
        project, rest = parts[0], parts[1:]
        with self.state.lock:
            self._rate_limit(f"{method} {_key(rest)}")
            if rest == ["aggregated", "instances"]:
                return self._aggregated(query)
            if rest[0] == "global":
                return self._global(method, project, rest[1:], query, body)
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
        s.calls.append(key)
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
        if method == "POST" and tail[1:] == ["setTags"]:
            instance = s.instances[(zone, name)]
            if body.get("fingerprint", "") != instance["tags"]["fingerprint"]:
                message = "Supplied fingerprint does not match current metadata fingerprint."
                raise ApiError(412, "conditionNotMet", message)
            items = list(body.get("items") or [])
            for i, tag in enumerate(items):
                _check_name(f"resource.items[{i}]", tag)
            instance["tags"] = {"items": items, "fingerprint": _fingerprint({"items": items})}
            return self._new_op(project, zone, "setTags", name)
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
        tags = list((body.get("tags") or {}).get("items") or [])
        for i, tag in enumerate(tags):
            _check_name(f"resource.tags.items[{i}]", tag)
        n = next(s.ids)
        s.instances[(zone, name)] = {
            **body,
            "tags": {"items": tags, "fingerprint": _fingerprint({"items": tags})},
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
        """Operations are RUNNING when returned and DONE on the first get/wait (global ones
        are kept under the zone "")."""
        op = self.state.operations.get((zone, name))
        if op is None:
            raise ApiError(404, "notFound", f"operation {name} not found")
        op["status"] = "DONE"
        if "progress" in op:
            op["progress"] = 100
        if "_error" in op:
            code, message, *status = op["_error"]
            http = status[0] if status else 503
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"] = http
            op["httpErrorMessage"] = "FORBIDDEN" if http == 403 else "SERVICE UNAVAILABLE"
        return {k: v for k, v in op.items() if not k.startswith("_")}

    # ---- global: firewall rules and their operations ----------------------------------------

    def _global(
        self, method: str, project: str, rest: list[str], query: dict[str, str], body: Any
    ) -> Any:
        kind, tail = (rest[0], rest[1:]) if rest else ("", [])
        if kind == "operations" and tail and method in ("GET", "POST"):
            if method == "POST" and tail[1:] != ["wait"]:
                raise ApiError(404, "notFound", f"no route global/{'/'.join(rest)}")
            return self._operation("", tail[0])
        if kind != "firewalls" or len(tail) > 1:
            raise ApiError(404, "notFound", f"no route global/{'/'.join(rest)}")
        s = self.state
        if not tail:
            if method == "POST":
                return self._firewall_create(project, body)
            if method == "GET":
                return self._firewall_list(project, query)
            raise ApiError(405, "badRequest", f"{method} global/firewalls")
        name = tail[0]
        found = s.firewalls.get(name)
        if found is None:
            missing = f"The resource 'projects/{project}/global/firewalls/{name}' was not found"
            raise ApiError(404, "notFound", missing)
        if method == "GET":
            return found
        if method == "DELETE":
            del s.firewalls[name]
            return self._new_global_op(project, "delete", name)
        if method == "PATCH":
            return self._firewall_patch(project, found, body)
        raise ApiError(405, "badRequest", f"{method} global/firewalls/{name}")

    def _firewall_create(self, project: str, body: dict[str, Any]) -> Any:
        s = self.state
        fault = next((f for f in s.firewall_faults if f.times is None or f.times > 0), None)
        if fault is not None and fault.times is not None:
            fault.times -= 1
        message = "Quota 'FIREWALLS' exceeded.  Limit: 200.0 globally."
        if fault is not None and not fault.in_operation:
            raise ApiError(403, fault.code, message)
        name = body.get("name")
        if fault is not None:
            return self._new_global_op(project, "insert", str(name), (fault.code, message, 403))
        _check_name("resource.name", name)
        if name in s.firewalls:
            msg = f"The resource 'projects/{project}/global/firewalls/{name}' already exists"
            raise ApiError(409, "alreadyExists", msg)
        self._firewall_insert(project, body)
        return self._new_global_op(project, "insert", str(name))

    def _firewall_insert(self, project: str, body: dict[str, Any]) -> None:
        """Store a rule as GCE shows it: defaults filled in, the network as a full URL."""
        for i, tag in enumerate(body.get("targetTags") or ()):
            _check_name(f"resource.targetTags[{i}]", tag)
        _check_allowed(body.get("allowed"))
        if not body.get("allowed") and not body.get("denied"):
            raise _invalid("resource.allowed", [], "Either allowed or denied is required.")
        network = str(body.get("network") or "global/networks/default").rsplit("/", 1)[-1]
        n = next(self.state.ids)
        base = f"{self.endpoint}{PREFIX}{project}/global"
        self.state.firewalls[body["name"]] = {
            "kind": "compute#firewall",
            "id": str(n),
            "creationTimestamp": _timestamp(datetime.now(UTC)),
            "description": "",
            "priority": 1000,
            "direction": "INGRESS",
            "sourceRanges": ["0.0.0.0/0"],  # GCE's default for ingress without sources
            "logConfig": {"enable": False},
            "disabled": False,
            **body,
            "network": f"{base}/networks/{network}",
            "selfLink": f"{base}/firewalls/{body['name']}",
        }

    def _firewall_patch(self, project: str, found: dict[str, Any], body: dict[str, Any]) -> Any:
        """JSON merge patch: the fields given replace the rule's (lists whole); the name and
        network cannot change."""
        name = found["name"]
        if body.get("name", name) != name:
            raise _invalid("resource.name", body["name"], "The name cannot be changed.")
        network = body.get("network")
        if network and network.rsplit("/", 1)[-1] != found["network"].rsplit("/", 1)[-1]:
            raise _invalid("resource.network", network, "The network cannot be changed.")
        merged = {**found, **{k: v for k, v in body.items() if k != "network"}}
        merged = {k: v for k, v in merged.items() if v is not None}
        for i, tag in enumerate(merged.get("targetTags") or ()):
            _check_name(f"resource.targetTags[{i}]", tag)
        _check_allowed(merged.get("allowed"))
        self.state.firewalls[name] = merged
        return self._new_global_op(project, "patch", name)

    def _firewall_list(self, project: str, query: dict[str, str]) -> Any:
        rules = list(self.state.firewalls.values())
        if query.get("filter"):
            m = _NAME_FILTER.match(query["filter"])
            if m is None:
                raise _invalid("filter", query["filter"], 'Only `name = "..."` is faked.')
            rules = [r for r in rules if r["name"] == m.group(1)]
        out: dict[str, Any] = {
            "kind": "compute#firewallList",
            "id": f"projects/{project}/global/firewalls",
            "selfLink": f"{self.endpoint}{PREFIX}{project}/global/firewalls",
        }
        return out | ({"items": rules} if rules else {})  # GCE leaves out an empty list

    def _new_global_op(
        self, project: str, kind: str, target: str, error: tuple[str, str, int] | None = None
    ) -> dict[str, Any]:
        n = next(self.state.ids)
        base = f"{self.endpoint}{PREFIX}{project}/global"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(n),
            "name": f"operation-{n}",
            "operationType": kind,
            "targetLink": f"{base}/firewalls/{target}",
            "status": "RUNNING",
            "progress": 0,
            "insertTime": _timestamp(datetime.now(UTC)),
            "selfLink": f"{base}/operations/operation-{n}",
        }
        self.state.operations[("", op["name"])] = op
        if error is not None:
            op["_error"] = error
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _aggregated(self, query: dict[str, str]) -> Any:
        items: dict[str, Any] = {}
        for (zone, _), instance in sorted(self.state.instances.items()):
            if _labels_match(instance, query.get("filter", "")):
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(instance)
        return {"items": items}


def _key(rest: list[str]) -> str:
    """A call's `counts` key: its path with the names of things as `*`
    (`zones/*/instances/*/setLabels`, `global/firewalls/*`, `aggregated/instances`)."""
    if rest[:1] in (["global"], ["aggregated"]):
        head, rest = rest[0], rest[1:]
        return "/".join([head, *(p if i % 2 == 0 else "*" for i, p in enumerate(rest))])
    return "/".join(p if i % 2 == 0 else "*" for i, p in enumerate(rest))


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

    do_GET = do_POST = do_DELETE = do_PATCH = _serve
